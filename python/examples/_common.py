"""Where the examples find the reference models and corpora: $SLIMLM_SHARED, else ../shared beside
the repository."""

import os
from pathlib import Path

SHARED = Path(os.environ.get("SLIMLM_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
MODELS = SHARED / "models"
HELDOUT = SHARED / "corpora" / "heldout"
UDHR = SHARED / "corpora" / "udhr"


def plt_or_none():
    """matplotlib.pyplot if installed (``pip install matplotlib``), else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None
