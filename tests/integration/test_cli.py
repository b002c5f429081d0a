"""The command line as an operator uses it: broker, topics, produce, schemas, config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from infra.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_broker_topics_produce_and_clean_stop(tmp_path: Path) -> None:
    port = free_port()
    broker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker", "--port", str(port), "--create-topics"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert broker.stdout is not None
        first = broker.stdout.readline()
        assert f"127.0.0.1:{port}" in first, first
        children = psutil.Process(broker.pid).children(recursive=True)
        assert any("tansu" in c.name() for c in children)
        env = {"COLDSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}

        listed = cli("topics", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        for topic in ("events", "items", "recommendations", "dead-letter"):
            assert topic in listed.stdout
        assert cli("topics", "create", env=env).returncode == 0  # all there, as asked
        # more partitions asked for than the topic has: said, and not a success
        more = cli("topics", "create", env={**env, "COLDSTREAM_PARTITIONS_EVENTS": "8"})
        assert more.returncode == 1
        assert "topic events exists with 4 partitions, the settings ask for 8" in more.stderr

        items = tmp_path / "items.jsonl"
        items.write_text(
            json.dumps({"item_id": "a", "title": "A film"})
            + "\n"
            + json.dumps({"item_id": "b", "title": "B film", "tags": "not-a-list"})
            + "\n"
        )
        produced = cli("produce", "items", str(items), env=env)
        assert produced.returncode == 1  # one line was invalid
        assert "sent 1, rejected 1" in produced.stdout
        assert f"{items}:2: tags" in produced.stdout
        allowed = cli("produce", "items", str(items), "--allow-invalid", env=env)
        assert allowed.returncode == 0
        # a topic never created is said, not auto-created by the broker with its own partitions
        missing = cli("produce", "items", str(items), env={**env, "COLDSTREAM_TOPIC_ITEMS": "nope"})
        assert missing.returncode == 1
        assert "topic 'nope' does not exist: run `coldstream topics create`" in missing.stderr
        assert "Traceback" not in missing.stderr
        assert "nope" not in cli("topics", "list", env=env).stdout
    finally:
        broker.send_signal(signal.SIGTERM)
        code = broker.wait(20)
    assert code == 0
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_schemas_and_config(tmp_path: Path) -> None:
    out = cli("schemas", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in tmp_path.glob("*.schema.json"))
    assert names == [
        "dead-letter.schema.json",
        "events.schema.json",
        "items.schema.json",
        "recommendations.schema.json",
    ]
    events = json.loads((tmp_path / "events.schema.json").read_text())
    assert {"event_id", "user_id", "type", "ts"} <= set(events["required"])
    config = cli("config", env={"COLDSTREAM_TOPIC_EVENTS": "behavior"})
    assert json.loads(config.stdout)["topic_events"] == "behavior"


@pytest.mark.timeout(180)
def test_a_worker_that_crashes_exits_non_zero(tmp_path: Path) -> None:
    """Faust turns a crash into exit status 1, and ``run_worker`` swallowed it: a worker that
    refused its store (here a users collection of another vector size) exited 0, so a
    supervisor restarting on failure left it dead (found by review)."""
    from infra.edge_store import EdgeStore

    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection("users", 8)  # the encoder gives 384
    store.close()
    env = {
        **os.environ,
        "COLDSTREAM_DATA_DIR": str(tmp_path),
        "COLDSTREAM_METRICS_PORT": str(free_port()),
        "COLDSTREAM_ENCODER_DEVICE": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode != 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "has dimension 8, the encoder gives 384" in done.stdout + done.stderr
