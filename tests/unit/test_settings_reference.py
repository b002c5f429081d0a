"""The settings reference (docs/settings.md) is the code's own list, and a misspelled variable
is reported instead of silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings, reference, unknown_variables

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_every_setting_says_what_it_does() -> None:
    undocumented = [n for n, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_the_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text() == reference(), (
        "docs/settings.md is stale: `coldstream config --reference > docs/settings.md`"
    )


def test_every_setting_is_in_the_reference_once() -> None:
    text = reference()
    for name in Settings.model_fields:
        assert text.count(f"| `COLDSTREAM_{name.upper()}` |") == 1, name


def test_a_variable_naming_no_setting_is_reported() -> None:
    env = {
        "COLDSTREAM_BATCH_SIZE": "5",  # the encoder's is COLDSTREAM_ENCODER_BATCH_SIZE
        "COLDSTREAM_RECS_COUNTT": "3",
        "COLDSTREAM_RECS_COUNT": "3",
        "coldstream_weight_view": "1",  # settings read names case-insensitively
        "PATH": "/bin",
    }
    assert unknown_variables(env) == ["COLDSTREAM_BATCH_SIZE", "COLDSTREAM_RECS_COUNTT"]
    assert unknown_variables({}) == []
