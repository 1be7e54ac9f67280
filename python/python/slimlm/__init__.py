"""slimlm: low-memory CPU inference, compression and quality analysis of small language models.

Open a model (a Hugging Face model directory, or a hub cache repository ``models--org--name``), generate,
stream, score and compress it; compute goes to the Rust library with the GIL released::

    import slimlm
    model = slimlm.Model.open("models/ref-gpt2")
    print(model.generate("The Debian package manager", max_tokens=32).text)
    for piece in model.stream("Die Paketverwaltung", max_tokens=32):
        print(piece, end="", flush=True)
    logits = model.session().prefill(model.tokenizer.encode("Hello"))   # numpy float32 [vocab]
    print(slimlm.perplexity(model, open("text.txt").read())["ppl"])

Quality analysis lives in :mod:`slimlm.eval` (``compare``, ``disparity``, ``sweep``, ``sensitivity``);
every function takes plain arguments (paths, method strings) and returns the object the command line
prints with ``--json``.
"""

from ._slimlm import (
    CancelledError,
    ChangedError,
    Completion,
    ConfigError,
    Error,
    FormatError,
    InputError,
    IoError,
    KernelsError,
    MissingTensorError,
    Model,
    NonFiniteError,
    PlanError,
    Session,
    Stream,
    TensorError,
    Tokenizer,
    TokenizerError,
    __version__,
    compress,
    kernels,
    perplexity,
)
from . import eval  # noqa: E402  (a submodule named like the builtin, as `slimlm eval` is)

__all__ = [
    "Model",
    "Tokenizer",
    "Session",
    "Stream",
    "Completion",
    "perplexity",
    "compress",
    "kernels",
    "eval",
    "Error",
    "IoError",
    "FormatError",
    "ConfigError",
    "ChangedError",
    "MissingTensorError",
    "TensorError",
    "TokenizerError",
    "InputError",
    "KernelsError",
    "NonFiniteError",
    "PlanError",
    "CancelledError",
    "__version__",
]


def _open_for_pickle(path, revision, context, kv_cache):
    """Unpickles a Model: opens the same directory with the same options (the mapping is not copied)."""
    return Model.open(path, revision=revision, context=context, kv_cache=kv_cache)
