"""The real all-MiniLM-L6-v2, loaded once for the module: vectors, batching, precision, batcher."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.batcher import MicroBatcher
from encoders.config import CPU_BATCH, GPU_BATCH, EncoderConfig
from encoders.model import (
    EncoderLoadError,
    TextEncoder,
    check_sentence_transformers_layout,
    cpu_bf16_supported,
    dtype_name,
    load_encoder,
    reduced_dtype,
    resolve_model_path,
)
from encoders.texts import item_text, user_text

pytestmark = pytest.mark.integration

MIXED = [
    "Toy Story (1995). Animation. Children's, Comedy",
    "GoldenEye (1995). Action. Adventure, Thriller",
    "a",
    "Star Wars (1977). Action. Adventure, Romance, Sci-Fi, War",
    "a slow, moody psychological drama about grief, memory and a family that cannot talk to "
    "each other after an accident on a winter road, told over three decades",
    "Heat (1995)",
]


@pytest.fixture(scope="module")
def encoder() -> Iterator[TextEncoder]:
    yield load_encoder(EncoderConfig())


@pytest.fixture(scope="module")
def fp32(encoder: TextEncoder) -> Iterator[TextEncoder]:
    if encoder.dtype == "float32":
        yield encoder
    else:
        yield load_encoder(EncoderConfig(dtype="float32"))


def test_identity(encoder: TextEncoder) -> None:
    assert encoder.name == "all-MiniLM-L6-v2"
    assert encoder.dim == 384
    assert encoder.device in ("cpu", "cuda")
    assert encoder.dtype in ("float32", "bfloat16", "float16")
    assert encoder.batch_size == (GPU_BATCH if encoder.device == "cuda" else CPU_BATCH)
    if encoder.device == "cpu":
        assert encoder.dtype == ("bfloat16" if cpu_bf16_supported() else "float32")
    else:
        assert encoder.dtype == dtype_name(reduced_dtype("cuda"))


def test_unit_norm_float32_in_order(encoder: TextEncoder) -> None:
    vectors = encoder.encode(MIXED)
    assert vectors.shape == (len(MIXED), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for text, row in zip(MIXED, vectors, strict=True):
        assert float(encoder.encode([text])[0] @ row) >= 0.999


def test_deterministic(encoder: TextEncoder) -> None:
    np.testing.assert_array_equal(encoder.encode(MIXED), encoder.encode(MIXED))


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_batching_and_padding_do_not_change_vectors(encoder: TextEncoder, batch_size: int) -> None:
    alone = np.stack([encoder.encode([t])[0] for t in MIXED])
    batched = encoder.encode(list(reversed(MIXED)), batch_size=batch_size)[::-1]
    padded = encoder.encode(MIXED, batch_size=batch_size, pad_to_max_length=True)
    assert np.min(np.sum(alone * batched, axis=1)) >= 0.999
    assert np.min(np.sum(alone * padded, axis=1)) >= 0.999


def test_related_texts_score_higher(encoder: TextEncoder) -> None:
    query, related, unrelated = encoder.encode(
        [
            user_text("search", "animated movie for kids with toys"),
            item_text("Toy Story (1995)", "Animation", ["Animation", "Children's", "Comedy"]),
            item_text("Heat (1995)", "Action", ["Action", "Crime", "Thriller"]),
        ]
    )
    assert float(query @ related) > float(query @ unrelated) + 0.1


def test_empty_text_rejected(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="empty"):
        encoder.encode(["fine", "   "])
    assert encoder.encode([]).shape == (0, 384)


def test_long_text_is_truncated(encoder: TextEncoder) -> None:
    long = "the quick brown fox jumps over the lazy dog " * 5_000
    assert len(encoder.token_ids([long])[0]) == encoder.max_length
    vector = encoder.encode([long])[0]
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_reduced_precision_matches_float32(encoder: TextEncoder, fp32: TextEncoder) -> None:
    reduced = reduced_dtype(encoder.device)
    if reduced is None:
        pytest.skip(f"no reduced precision on this {encoder.device}")
    if encoder.dtype == dtype_name(reduced):
        low = encoder
    else:  # auto fell back to float32
        low = load_encoder(EncoderConfig(device=encoder.device, dtype=dtype_name(reduced)))
    assert low.dtype == dtype_name(reduced)
    cosine = np.sum(low.encode(MIXED) * fp32.encode(MIXED), axis=1)
    assert float(np.min(cosine)) >= 0.999


def test_local_directory_named_after_itself(tmp_path: Path) -> None:
    packaged, _ = resolve_model_path("")
    local = tmp_path / "my-minilm"
    local.mkdir()
    for file in packaged.iterdir():
        if file.is_file():
            os.symlink(file, local / file.name)
    loaded = load_encoder(EncoderConfig(model_path=str(local), dtype="float32"))
    assert loaded.name == "my-minilm"
    assert loaded.dim == 384


def test_batcher_matches_direct_encode(encoder: TextEncoder) -> None:
    calls = [[t] for t in MIXED] + [MIXED[:3], MIXED[2:], [MIXED[4], MIXED[0]]]
    batch_sizes: list[int] = []

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(
            encoder,
            max_batch=4,
            max_wait_ms=5.0,
            queue_size=8,
            on_batch=lambda n, _s: batch_sizes.append(n),
        )
        async with batcher:
            return await asyncio.gather(*(batcher.encode(c) for c in calls))

    results = asyncio.run(main())
    for call, got in zip(calls, results, strict=True):
        direct = encoder.encode(call)
        assert got.shape == direct.shape
        assert float(np.min(np.sum(got * direct, axis=1))) >= 0.999
    assert sum(batch_sizes) == sum(len(c) for c in calls)
    assert max(batch_sizes) <= 4


def test_forward_pass_runs_off_the_event_loop(encoder: TextEncoder) -> None:
    """The pass can only finish if the loop keeps running while it is in progress."""
    in_pass = threading.Event()
    loop_alive = threading.Event()
    threads: list[str] = []

    class Probe:
        dim = encoder.dim
        token_ids = staticmethod(encoder.token_ids)

        def encode_ids(self, ids: Sequence[Sequence[int]], *, batch_size: int) -> np.ndarray:
            threads.append(threading.current_thread().name)
            in_pass.set()
            assert loop_alive.wait(10), "the event loop was blocked during the forward pass"
            return encoder.encode_ids(ids, batch_size=batch_size)

    async def main() -> np.ndarray:
        async def heartbeat() -> None:
            while not in_pass.is_set():
                await asyncio.sleep(0.001)
            loop_alive.set()

        probe = Probe()
        async with MicroBatcher(probe, max_batch=64, max_wait_ms=1.0, queue_size=64) as b:  # type: ignore[arg-type]
            beat = asyncio.create_task(heartbeat())
            vectors = await b.encode(MIXED)
            await beat
            return vectors

    vectors = asyncio.run(main())
    assert threads and all(name.startswith("encoder") for name in threads)
    assert float(np.min(np.sum(vectors * encoder.encode(MIXED), axis=1))) >= 0.999


def test_load_logs_the_choice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="encoders.model"):
        load_encoder(EncoderConfig(dtype="float32", max_length=32))
    assert "all-MiniLM-L6-v2" in caplog.text


def test_a_device_that_gives_nan_is_an_outage_not_bad_input(
    encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, NaN vectors went out as vectors: the store refused each one as a bad record
    (every item dead-lettered) while the probe said the encoder was fine. Found by review."""
    real = encoder.model

    class Broken:
        def __call__(self, **inputs: object) -> object:
            out = real(**inputs)
            out.last_hidden_state.fill_(float("nan"))
            return out

    monkeypatch.setattr(encoder, "model", Broken())
    with pytest.raises(RuntimeError, match="non-finite"):
        encoder.encode(["Heat (1995)"])

    async def main() -> bool:
        async with MicroBatcher(encoder, max_batch=64, max_wait_ms=1.0, queue_size=64) as b:
            return await b.answers()

    assert asyncio.run(main()) is False  # the probe fails too: the worker waits it out


def test_cuda_picks_native_bf16_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch answers True for emulated bf16 below compute capability 8 unless told not to."""
    calls: list[dict[str, object]] = []

    def supported(including_emulation: bool = True) -> bool:
        calls.append({"including_emulation": including_emulation})
        return including_emulation  # an sm_75 device: emulation only

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert reduced_dtype("cuda") is torch.float16
    assert calls == [{"including_emulation": False}]


def test_a_model_pooled_otherwise_is_refused(tmp_path: Path) -> None:
    """A CLS-pooled model or one with a Dense layer would load and give vectors in another
    space; the packaged model's own files pass."""
    path, _ = resolve_model_path("")
    check_sentence_transformers_layout(path, "packaged")
    cls = tmp_path / "cls"
    (cls / "1_Pooling").mkdir(parents=True)
    (cls / "modules.json").write_text((path / "modules.json").read_text())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (cls / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(EncoderLoadError, match="pooling_mode_cls_token"):
        check_sentence_transformers_layout(cls, "cls")
    dense = tmp_path / "dense"
    dense.mkdir()
    modules = json.loads((path / "modules.json").read_text())
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (dense / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EncoderLoadError, match="Dense"):
        check_sentence_transformers_layout(dense, "dense")
    check_sentence_transformers_layout(tmp_path, "plain")  # no such files: mean-pooled
    for broken in ("null", '{"0": "Transformer"}', '[{"idx": 0}]'):
        (dense / "modules.json").write_text(broken)
        with pytest.raises(EncoderLoadError, match="not a list of modules"):
            check_sentence_transformers_layout(dense, "broken")
