"""Encoder settings, kept free of pydantic so ``encoders`` depends on torch/transformers only.

``infra.settings`` reads the ``COLDSTREAM_ENCODER_*`` environment variables and builds one of these.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The environment variable (read by infra.settings) that sets ``EncoderConfig.model_path``;
#: named in load errors so an operator knows what to fix.
MODEL_PATH_SETTING = "COLDSTREAM_ENCODER_MODEL_PATH"
DEVICE_SETTING = "COLDSTREAM_ENCODER_DEVICE"
DTYPE_SETTING = "COLDSTREAM_ENCODER_DTYPE"

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")

#: Texts per forward pass when ``batch_size`` is 0 ("by device"). On CPU a pass over 64 short
#: texts already keeps the cores busy; on a GPU a pass is launch-bound, so bigger passes come nearly
#: free: on an H200, 256 per pass gave 1.2-1.6x the streaming throughput of 64 (README).
CPU_BATCH = 64
GPU_BATCH = 256


@dataclass(frozen=True)
class EncoderConfig:
    """How to load and run the text encoder; every field has a working default."""

    model_path: str = ""  # "" = packaged all-MiniLM-L6-v2
    device: str = "auto"  # auto|cpu|cuda
    dtype: str = "auto"  # auto|float32|bfloat16|float16
    max_length: int = 128
    batch_size: int = 0  # max texts per forward pass; 0 = by device (CPU_BATCH / GPU_BATCH)
    max_wait_ms: float = 2.0  # batcher wait for more callers
    queue_size: int = 4096  # batcher bound (texts)
    threads: int = 0  # torch intra-op threads, 0 = leave default
    cudnn_attention: bool = False  # CUDA: let attention use cuDNN (plans per input shape)

    def __post_init__(self) -> None:
        # Fail at construction, not at the first forward pass deep inside a stream worker.
        if self.device not in DEVICES:
            raise ValueError(f"{DEVICE_SETTING}={self.device!r}: expected one of {DEVICES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{DTYPE_SETTING}={self.dtype!r}: expected one of {DTYPES}")
        if not 8 <= self.max_length <= 512:
            raise ValueError(f"max_length={self.max_length}: expected 8..512")
        if self.batch_size < 0:
            raise ValueError(f"batch_size={self.batch_size}: expected >= 0 (0 = by device)")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={self.max_wait_ms}: expected >= 0")
        if self.queue_size < 1:
            raise ValueError(f"queue_size={self.queue_size}: expected >= 1")
        if self.threads < 0:
            raise ValueError(f"threads={self.threads}: expected >= 0")


def batch_size_for(config: EncoderConfig, device: str) -> int:
    """The configured batch size, or the device's default when it is 0."""
    if config.batch_size:
        return config.batch_size
    return GPU_BATCH if device == "cuda" else CPU_BATCH
