"""Type stubs of the compiled module (the public names are re-exported by ``slimlm``)."""

import os
import pathlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
from typing_extensions import final

__all__ = [
    "CancelledError", "ChangedError", "Completion", "ConfigError", "Error", "FormatError", "InputError",
    "IoError", "KernelsError", "MissingTensorError", "Model", "NonFiniteError", "PlanError", "Session",
    "Stream", "TensorError", "Tokenizer", "TokenizerError", "__version__", "_rust_iterator_decode",
    "compare", "compress", "disparity", "kernels", "perplexity", "sensitivity", "sweep",
]

__version__: str

_PathLike = Union[str, "os.PathLike[str]"]
_ModelLike = Union["Model", _PathLike]
_Prompt = Union[str, Sequence[int], npt.NDArray[np.integer]]
_Progress = Callable[[int, int, str], Any]
"""``progress(done, total, stage)``; called from the computation (the GIL is taken for the call). An
exception it raises is re-raised when the computation returns."""
_Report = Dict[str, Any]

class Error(Exception):
    """Base class of every error slimlm raises."""

class IoError(Error, OSError):
    """A file or directory could not be read or written. ``path`` names it."""
    path: str

class FormatError(Error):
    """Not a valid safetensors file. ``path`` names it."""
    path: str

class ConfigError(Error):
    """config.json is missing a field, unsupported, or inconsistent with the weights."""
    path: str

class ChangedError(Error):
    """A memory-mapped model file changed while in use."""
    path: str

class MissingTensorError(Error):
    """A tensor the architecture needs is missing (``tensor``) from ``path``."""
    path: str
    tensor: str

class TensorError(Error):
    """A tensor (``tensor``) has the wrong dtype, shape or alignment."""
    path: str
    tensor: str

class TokenizerError(Error):
    """The tokenizer files are invalid."""

class InputError(Error, ValueError):
    """An invalid argument: empty prompt, id out of range, prompt beyond the context, bad option."""

class KernelsError(Error):
    """The kernel path forced by SLIMLM_KERNELS cannot run on this CPU."""

class NonFiniteError(Error):
    """A forward pass produced NaN or infinity (the message names the tensor to blame)."""

class PlanError(Error, ValueError):
    """An invalid compression plan."""

class CancelledError(Error):
    """A generation was cancelled before it ended."""

def kernels() -> str:
    """The kernel path this CPU runs: "scalar", "portable", "avx2" or "avx512"."""

@final
class Tokenizer:
    """The model's byte-level BPE tokenizer (equal to Hugging Face ``tokenizers`` token for token)."""

    @property
    def vocab_size(self) -> int: ...
    def __len__(self) -> int: ...
    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` with the tokenizer's own special tokens (OPT's leading ``</s>``)."""
    def encode_plain(self, text: str) -> List[int]:
        """Token ids without the post-processor's special tokens."""
    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (bytes that form no character become U+FFFD)."""
    def token_bytes(self, id: int) -> bytes:
        """The bytes of one token (possibly part of a UTF-8 character)."""
    def token_id(self, token: str) -> Optional[int]:
        """The id of a token given by its text, e.g. ``"<|endoftext|>"``."""
    def decode_pieces(self, ids: Sequence[int]) -> List[str]:
        """The pieces an incremental detokenizer gives out for ``ids``: whole characters only;
        ``"".join(pieces) == decode(ids)``."""

@final
class Completion:
    """The result of :meth:`Model.generate` (and :meth:`Stream.completion`)."""

    text: str
    """The new text (the prompt excluded), cut before a stop string."""
    ids: List[int]
    """The new token ids (the end-of-text token included when generation ended on it)."""
    prompt_ids: List[int]
    finish_reason: str
    """"eos", "length" or "stop"."""
    prompt_tokens: int
    generated_tokens: int
    prefill_ms: float
    decode_ms: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    @property
    def logprobs(self) -> Optional[npt.NDArray[np.float32]]:
        """Log-probability of every new token (``logprobs=True``), else None."""

@final
class Stream(Iterator[str]):
    """Text pieces as they are generated (see :meth:`Model.stream`)."""

    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...
    @property
    def ids(self) -> List[int]: ...
    @property
    def text(self) -> str: ...
    @property
    def finish_reason(self) -> Optional[str]: ...
    def completion(self) -> Completion:
        """Runs to the end if needed and returns the :class:`Completion`."""

@final
class Session:
    """The KV cache of one sequence over a model (see :meth:`Model.session`)."""

    def prefill(
        self, ids: Union[Sequence[int], npt.NDArray[np.integer]], *, all_logits: bool = False
    ) -> npt.NDArray[np.float32]:
        """Appends ``ids``; returns the logits after the last, ``[vocab]``, or with ``all_logits`` after
        every one, ``[len(ids), vocab]``."""
    def step(self, id: int) -> npt.NDArray[np.float32]:
        """Appends one token; returns the logits that follow it, ``[vocab]``."""
    def last_logits(self) -> npt.NDArray[np.float32]: ...
    def reset(self) -> None: ...
    def rewind(self, position: int) -> None:
        """Keeps the first ``position`` tokens."""
    @property
    def position(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @threads.setter
    def threads(self, value: int) -> None: ...
    @property
    def kv_cache_bytes(self) -> int: ...

@final
class Model:
    """A model of any supported family, dense or compressed, weights memory-mapped. Thread-safe."""

    @staticmethod
    def open(
        path: _PathLike,
        *,
        revision: str = "main",
        context: Optional[int] = None,
        kv_cache: str = "f32",
    ) -> "Model":
        """Opens a model directory or a Hugging Face hub cache repository (``models--org--name``,
        resolved through ``refs/<revision>``). ``context`` changes the context length, ``kv_cache``
        ("f32" or "f16") the KV cache type of new sessions."""
    @property
    def path(self) -> pathlib.Path:
        """The directory the weights were opened from (the snapshot, for a hub cache repository)."""
    @property
    def config(self) -> Dict[str, Any]:
        """The architecture with the same keys for every family (arch, n_layer, d_model, n_ctx, ...)."""
    @property
    def hf_config(self) -> Dict[str, Any]:
        """config.json as on disk."""
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def eos_token_ids(self) -> List[int]: ...
    @property
    def weight_bytes(self) -> int: ...
    @property
    def file_bytes(self) -> int: ...
    @property
    def copied_bytes(self) -> int: ...
    def inspect(self) -> _Report:
        """The object ``slimlm inspect --json`` prints: plan, bytes per component and layer, storage,
        ratio."""
    def session(self, *, threads: Optional[int] = None) -> Session: ...
    def generate(
        self,
        prompt: _Prompt,
        max_tokens: int = 48,
        *,
        temperature: Optional[float] = None,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        ignore_eos: bool = False,
        logprobs: bool = False,
        threads: Optional[int] = None,
    ) -> Completion:
        """Greedy unless ``temperature`` > 0 is given; ends at the end-of-text token, ``max_tokens`` or
        a ``stop`` string."""
    def stream(
        self,
        prompt: _Prompt,
        max_tokens: int = 48,
        *,
        temperature: Optional[float] = None,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        ignore_eos: bool = False,
        logprobs: bool = False,
        threads: Optional[int] = None,
    ) -> Stream:
        """Like :meth:`generate`, as an iterator of text pieces made of whole characters."""
    def hidden_states(self, prompt: _Prompt) -> List[npt.NDArray[np.float32]]:
        """``n_layer + 1`` arrays ``[tokens, width]`` as transformers' ``output_hidden_states``."""
    def linear_outputs(self, prompt: _Prompt) -> Dict[Tuple[int, str], npt.NDArray[np.float32]]:
        """``(layer, component) -> [tokens, out]`` for every linear layer."""
    def logits(self, prompt: _Prompt) -> npt.NDArray[np.float32]:
        """Logits after every token, ``[tokens, vocab]``."""

def perplexity(
    model: _ModelLike,
    text: Union[str, Sequence[int]],
    context: int = 256,
    stride: int = 256,
    *,
    threads: Optional[int] = None,
    progress: Optional[_Progress] = None,
) -> _Report:
    """``slimlm perplexity --json`` (ppl, mean_nll, tokens_scored, tokens, windows, context, stride,
    model) plus ``nll`` (float64 numpy, per scored token: ``nll[i]`` is that of ``ids[i + 1]``) and
    ``ids`` (uint32 numpy)."""

def compress(
    model_dir: _ModelLike,
    out_dir: _PathLike,
    *,
    mode: Optional[str] = None,
    plan: Union[_PathLike, Dict[str, Any], None] = None,
    rank: Optional[int] = None,
    energy: Optional[float] = None,
    budget: Optional[float] = None,
    factors: Optional[str] = None,
    embeddings: Optional[str] = None,
    group: Optional[int] = None,
    skip: Union[str, Sequence[str], None] = None,
    skip_layers: Optional[Sequence[int]] = None,
    calibration: Union[str, Sequence[str], None] = None,
    svd: Optional[str] = None,
    calibration_tokens: int = 8192,
    alpha: Optional[float] = None,
    s_fold: Optional[str] = None,
    overwrite: bool = False,
    threads: Optional[int] = None,
    progress: Optional[_Progress] = None,
) -> _Report:
    """``slimlm compress --json``: writes a compressed model directory and returns the report."""

def compare(
    reference: _ModelLike,
    candidate: Optional[_ModelLike] = None,
    *,
    text: Union[str, Sequence[int]],
    plan: Union[_PathLike, Dict[str, Any], None] = None,
    method: Optional[str] = None,
    embeddings: str = "int8",
    context: int = 256,
    max_tokens: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Optional[_Progress] = None,
) -> _Report:
    """``slimlm eval compare --json``."""

def disparity(
    reference: _ModelLike,
    candidate: Optional[_ModelLike] = None,
    *,
    plan: Union[_PathLike, Dict[str, Any], None] = None,
    method: Optional[str] = None,
    embeddings: str = "int8",
    corpus: Optional[_PathLike] = None,
    languages: Union[str, Sequence[str], None] = None,
    max_lines: Optional[int] = None,
    max_tokens: Optional[int] = None,
    context: int = 256,
    stride: int = 256,
    threads: Optional[int] = None,
    progress: Optional[_Progress] = None,
) -> _Report:
    """``slimlm eval disparity --json``."""

def sweep(
    model: _ModelLike,
    *,
    points: Union[str, Sequence[str], None] = None,
    ranks: Union[str, Sequence[int], None] = None,
    energies: Union[str, Sequence[float], None] = None,
    int8_groups: Union[str, Sequence[Union[int, str]], None] = None,
    factors: str = "int8",
    embeddings: str = "int8",
    corpus: Optional[_PathLike] = None,
    languages: Union[str, Sequence[str], None] = None,
    max_lines: Optional[int] = None,
    max_tokens: Optional[int] = None,
    context: int = 256,
    stride: int = 256,
    threads: Optional[int] = None,
    progress: Optional[_Progress] = None,
) -> _Report:
    """``slimlm eval sweep --json``."""

def sensitivity(
    model: _ModelLike,
    *,
    base: str = "lowrank:r32:int8",
    protect: str = "int8",
    embeddings: str = "int8",
    unit: str = "layer",
    budget_mb: Optional[float] = None,
    corpus: Optional[_PathLike] = None,
    languages: Union[str, Sequence[str], None] = None,
    max_lines: Optional[int] = None,
    max_tokens: Optional[int] = None,
    context: int = 256,
    stride: int = 256,
    threads: Optional[int] = None,
    progress: Optional[_Progress] = None,
) -> _Report:
    """``slimlm eval sensitivity --json``."""

def _rust_iterator_decode(
    model: Model, prompt: Sequence[int], max_tokens: int, threads: Optional[int] = None
) -> Tuple[int, float, float]: ...
