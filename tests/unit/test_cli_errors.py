"""What a user gets for a mistake: a one-line error and an exit status, not a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from infra.settings import get_settings
from ranking.split import COLD_ITEMS_BY
from streams.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh_settings() -> None:
    get_settings.cache_clear()  # main() reads the environment through the cached settings


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--k", "0"], "--k: each value must be at least 1"),
        (["eval", "--k", ""], "--k: expected at least one integer"),
        (["eval", "--test-users-frac", "0"], "--test-users-frac: must be in (0, 1)"),
        (["eval", "--test-users-frac", "1"], "--test-users-frac: must be in (0, 1)"),
        (["eval", "--mmr-lambda", "5"], "--mmr-lambda: must be in [0, 1]"),
        (["eval", "--cold-items-by", "newest"], "--cold-items-by: invalid choice: 'newest'"),
        (["eval", "--epochs", "-1"], "--epochs: must be at least 1"),
        (["eval", "--replay-batch", "-1"], "--replay-batch: must be at least 0"),
        (["train", "--negatives", "0"], "--negatives: must be at least 1"),
        (["broker", "--port", "99999"], "--port: a port is 1-65535"),
    ],
)
def test_option_values_are_checked_before_any_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_repeated_seeds_and_ks_count_once() -> None:
    from streams.cli import build_parser

    args = build_parser().parse_args(["eval", "--seeds", "0,1,0", "--k", "3,1,3"])
    assert args.seeds == (0, 1) and args.k == (3, 1)


def test_the_cold_item_draws_the_cli_offers_are_the_splits() -> None:
    from streams.cli import build_parser

    assert build_parser().parse_args(["eval"]).cold_items_by == "random"
    eval_parser = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["eval"]
    offered = next(a for a in eval_parser._actions if a.dest == "cold_items_by").choices
    assert tuple(offered or ()) == COLD_ITEMS_BY
    for by in COLD_ITEMS_BY:  # the CLI lists them by hand so that pandas loads only when used
        assert build_parser().parse_args(["eval", "--cold-items-by", by]).cold_items_by == by


def test_a_missing_data_file_is_one_line_and_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["eval", "--items", str(missing), "--interactions", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"coldstream: error: {missing}: no such file"


def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLDSTREAM_PARTITIONS_ITEMS", "0")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "COLDSTREAM_PARTITIONS_ITEMS:" in err
    assert "Traceback" not in err


def test_a_bug_is_not_hidden_as_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the user's input and environment get the one-line treatment."""
    import streams.cli as cli

    def broken(*_: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_cmd_config", broken)
    with pytest.raises(KeyError):
        main(["config"])


def test_bench_options_before_the_sub_command_are_kept() -> None:
    """`bench --json F encoder` wrote nothing: the sub-command's own --json default replaced F."""
    from streams.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["bench", "--json", "f.json", "encoder"]).json == "f.json"
    assert parse(["bench", "encoder", "--json", "g.json"]).json == "g.json"
    assert parse(["bench", "store"]).json is None
    # the traffic options too, both places
    given_first = parse(["bench", "--users", "7", "--seed", "3", "engine"])
    assert (given_first.users, given_first.seed, given_first.concurrency) == (7, 3, 50)
    assert parse(["bench", "engine", "--users", "9"]).users == 9


def test_produce_reads_past_a_byte_order_mark(tmp_path: Path) -> None:
    """An editor's UTF-8 byte-order mark made line 1 `bad_json`."""
    from streams.produce import _lines

    path = tmp_path / "items.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"item_id": "a"}\r\n\r\n{"item_id": "b"}\n')
    assert list(_lines(path)) == [(1, b'{"item_id": "a"}'), (3, b'{"item_id": "b"}')]


def test_a_rule_across_settings_is_said_without_a_variable_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLDSTREAM_HEALTH_BEAT_EVERY_S", "100")  # beats slower than the stall
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "COLDSTREAM_:" not in err


def test_train_refuses_an_output_path_that_is_a_directory_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It wrote the snapshot, then failed on the ranker after the whole fit (found by review);
    the data file does not even exist here: the paths are checked first."""
    out = tmp_path / "adir"
    out.mkdir()
    missing = tmp_path / "nope.jsonl"
    argv = ["train", "--items", str(missing), "--interactions", str(missing)]
    assert main([*argv, "--ranker-out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"coldstream: error: {out}: is a directory, " + (
        "expected a file path to write"
    )
    assert (
        main(["eval", "--items", str(missing), "--interactions", str(missing), "--json", str(out)])
        == 1
    )
    assert "is a directory" in capsys.readouterr().err


def test_too_few_users_is_said_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five users once failed deep in training with "need more users to train on (got 3)"."""
    import json

    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"item_id": f"i{n}", "title": f"T{n}"}) + "\n" for n in range(4))
    )
    inter = tmp_path / "inter.csv"
    rows = [f"u{u},i{(u + k) % 4},{1_700_000_000 + 10 * u + k}" for u in range(5) for k in range(3)]
    inter.write_text("user_id,item_id,ts\n" + "\n".join(rows) + "\n")
    assert main(["eval", "--items", str(items), "--interactions", str(inter)]) == 1
    err = capsys.readouterr().err
    assert "5 user(s) with 2 or more item interactions; this run needs at least 6" in err
