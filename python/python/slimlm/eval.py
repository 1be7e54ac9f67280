"""Quality analysis of compressed models: the ``slimlm eval`` commands as functions.

Each takes plain arguments (model directories or :class:`slimlm.Model` objects, method strings such as
``"int8"`` or ``"lowrank:r64:int8"``, plan files or dicts) and returns plain data: the dict the command
line prints with ``--json``, with the same defaults. So a large sweep spreads over processes or machines
with any standard engine (``concurrent.futures``, Ray, Dask): see ``python/examples/parallel_sweep.py``.

Progress goes to an optional ``progress(done, total, stage)`` callback; nothing is printed.
"""

from ._slimlm import compare, disparity, sensitivity, sweep

__all__ = ["compare", "disparity", "sweep", "sensitivity"]
