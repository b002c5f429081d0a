"""Text builders, settings validation and model-path errors: no model is loaded here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encoders.config import (
    CPU_BATCH,
    GPU_BATCH,
    MODEL_PATH_SETTING,
    EncoderConfig,
    batch_size_for,
)
from encoders.model import (
    EncoderLoadError,
    check_texts,
    configure_cuda_attention,
    cpu_bf16_supported,
    cpu_model,
    load_encoder,
    resolve_model_path,
    runtime_environment,
    split_sorted,
)
from encoders.texts import item_text, user_text

pytestmark = pytest.mark.unit


def test_item_text_orders_fields_and_skips_missing() -> None:
    text = item_text(
        "Toy Story (1995)",
        category="Animation",
        tags=["Animation", "Children's", "Comedy"],
        brand=None,
        description="  A cowboy doll\n is threatened by a new spaceman.  ",
    )
    assert text == (
        "Toy Story (1995). Animation. Children's, Comedy. "
        "A cowboy doll is threatened by a new spaceman"
    )


def test_item_text_title_only_and_tags_only() -> None:
    assert item_text("GoldenEye (1995)") == "GoldenEye (1995)"
    assert item_text(None, tags=["jazz", "Jazz", " ", "vinyl"]) == "jazz, vinyl"
    assert item_text("Kettle", brand="Acme") == "Kettle. Acme"


def test_item_text_with_nothing_is_rejected() -> None:
    with pytest.raises(ValueError, match="no text"):
        item_text(None, category=" ", tags=[], brand="", description=None)


def test_user_text() -> None:
    assert user_text("search", "  space\tcowboys ") == "space cowboys"
    assert user_text("review", "Loved it.") == "Loved it."
    assert user_text("profile", "I like sci-fi and westerns") == "I like sci-fi and westerns"
    with pytest.raises(ValueError, match="empty"):
        user_text("search", "   ")
    with pytest.raises(ValueError, match="carries no user text"):
        user_text("click", "x")


def test_check_texts_rejects_empty_and_non_strings() -> None:
    assert check_texts(["a", " b "]) == ["a", " b "]
    with pytest.raises(ValueError, match="#1 is empty"):
        check_texts(["ok", " \n\t"])
    with pytest.raises(TypeError):
        check_texts("a single string")
    with pytest.raises(TypeError):
        check_texts(["ok", None])  # type: ignore[list-item]


def test_config_rejects_bad_values() -> None:
    EncoderConfig()
    with pytest.raises(ValueError, match="COLDSTREAM_ENCODER_DEVICE"):
        EncoderConfig(device="tpu")
    with pytest.raises(ValueError, match="COLDSTREAM_ENCODER_DTYPE"):
        EncoderConfig(dtype="int8")
    with pytest.raises(ValueError):
        EncoderConfig(batch_size=-1)


def test_batch_size_zero_means_by_device() -> None:
    assert batch_size_for(EncoderConfig(), "cpu") == CPU_BATCH == 64
    assert batch_size_for(EncoderConfig(), "cuda") == GPU_BATCH == 256
    assert batch_size_for(EncoderConfig(batch_size=32), "cuda") == 32
    assert batch_size_for(EncoderConfig(batch_size=512), "cpu") == 512


def test_split_sorted_is_even_and_complete() -> None:
    order = list(range(65))
    groups = split_sorted(order, 64)
    assert [len(g) for g in groups] == [32, 33]
    assert [i for g in groups for i in g] == order
    assert split_sorted([3, 1], 64) == [[3, 1]]
    assert [len(g) for g in split_sorted(list(range(5)), 1)] == [1] * 5


def test_missing_model_path_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(EncoderLoadError, match=MODEL_PATH_SETTING) as info:
        load_encoder(EncoderConfig(model_path=str(missing)))
    assert "does not exist" in str(info.value)


def test_directory_without_safetensors_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(EncoderLoadError, match=MODEL_PATH_SETTING) as info:
        resolve_model_path(str(tmp_path))
    assert "safetensors" in str(info.value)


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match=r"config\.json"):
        resolve_model_path(str(tmp_path))


def test_unsupported_model_type_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(EncoderLoadError, match=MODEL_PATH_SETTING) as info:
        load_encoder(EncoderConfig(model_path=str(tmp_path)))
    assert "gpt2" in str(info.value)


def test_default_model_resolves_to_the_package() -> None:
    path, name = resolve_model_path("")
    assert name == "all-MiniLM-L6-v2"
    assert (path / "model.safetensors").is_file()


def test_cpu_bf16_probe_is_a_bool() -> None:
    assert isinstance(cpu_bf16_supported(), bool)


def test_cuda_attention_switch_follows_the_setting() -> None:
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        configure_cuda_attention(EncoderConfig())
        assert not torch.backends.cuda.cudnn_sdp_enabled()  # off unless asked for
        configure_cuda_attention(EncoderConfig(cudnn_attention=True))
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_worker_passes_the_encoder_settings_through() -> None:
    from infra.settings import Settings
    from streams.worker import encoder_config

    config = encoder_config(Settings(encoder_cudnn_attention=True, encoder_batch_size=0))
    assert config.cudnn_attention is True
    assert config.batch_size == 0  # by device, resolved when the model loads


def test_runtime_environment_names_the_host() -> None:
    env = runtime_environment()
    assert env["cpu"] and env["cpu"] == cpu_model()
    assert env["cores"] >= 1
    assert env["torch"] == torch.__version__
    assert set(env) >= {"transformers", "numpy", "cpu_capability", "cpu_bf16", "cuda"}
