"""Issue 6 acceptance: a real Prometheus server scrapes a real worker, with the shipped config.

Embedded broker + a real ``coldstream worker`` process (:class:`streams.stack.LocalStack`) and
Debian's ``prometheus`` on loopback, configured from a copy of ``infra/prometheus/prometheus.yml``
whose target is the worker's actual metrics port (and whose scrape interval is 1 s, so the test
is quick). Assertions go through Prometheus's HTTP query API, as a dashboard would.

``prometheus`` and ``promtool`` come from ``scripts/setup.sh`` (Debian's package); when they are
missing every test here FAILS (it is not skipped) with a message saying so.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.broker import free_port
from infra.settings import Settings
from streams.produce import Publisher
from streams.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"
DEPLOY_CONFIG = ROOT / "infra" / "deploy" / "prometheus.yml"  # the docker-compose variant
DASHBOARD = ROOT / "infra" / "grafana" / "coldstream.json"
SHIPPED_TARGET = "127.0.0.1:9108"
SCRAPE_INTERVAL_S = 1
# Dashboard series the worker does not feed (none: consumer lag is set by a timer in
# streams/agents.py every COLDSTREAM_LAG_INTERVAL_S).
NOT_YET_FED: tuple[str, ...] = ()

ITEMS = [
    ("toy", "Toy Story", "Animation"),
    ("lion", "The Lion King", "Animation"),
    ("heat", "Heat", "Crime"),
    ("casino", "Casino", "Crime"),
    ("alien", "Alien", "Sci-Fi"),
    ("matrix", "The Matrix", "Sci-Fi"),
    ("titanic", "Titanic", "Romance"),
    ("jaws", "Jaws", "Thriller"),
]
USERS = ["ana", "ben", "cy"]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` not found on PATH: run scripts/setup.sh (it installs Debian's "
            "`prometheus` package, which brings `prometheus` and `promtool`)",
            pytrace=False,
        )
    return path


def click_events(n: int, kind: str = "click") -> list[dict[str, object]]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "user_id": USERS[i % len(USERS)],
            "type": kind,
            "item_id": ITEMS[i % len(ITEMS)][0],
            "ts": int(time.time() * 1000),
        }
        for i in range(n)
    ]


class PrometheusServer:
    """``prometheus`` on 127.0.0.1:<free port> with a TSDB in ``root``; stopped on exit."""

    def __init__(self, binary: str, config: Path, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        self.cmd = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self.wait(lambda: self._get("/-/ready") is not None, "Prometheus ready", 60)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, OSError):
            return None

    def query(self, expr: str) -> list[dict[str, Any]]:
        """``/api/v1/query`` → the result vector; a PromQL error fails the test with its text."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            pytest.fail(f"query {expr!r} failed: {exc.code} {exc.read().decode(errors='replace')}")
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (``None`` when the vector is empty)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr!r} returned {len(result)} series, not one: {result}"
        return float(result[0]["value"][1])

    def wait(self, ready: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s}s\n{self.log()}")
            time.sleep(0.25)

    def wait_value(self, expr: str, at_least: float, timeout_s: float = 60) -> float:
        seen: list[float | None] = [None]

        def ready() -> bool:
            seen[0] = self.value(expr)
            return seen[0] is not None and seen[0] >= at_least

        try:
            self.wait(ready, f"{expr} >= {at_least} (last {seen[0]})", timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(f"{expr} reached {seen[0]}, not {at_least}") from exc
        assert seen[0] is not None
        return seen[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


def scrape_config_for(target: str) -> dict[str, Any]:
    """The shipped config, its coldstream target replaced by ``target``, scraped every second."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "coldstream"]
    assert len(jobs) == 1, "the shipped config must have exactly one `coldstream` job"
    replaced = 0
    for static in jobs[0]["static_configs"]:
        targets = static["targets"]
        replaced += targets.count(SHIPPED_TARGET)
        static["targets"] = [target if t == SHIPPED_TARGET else t for t in targets]
    assert replaced == 1, f"the shipped config must target {SHIPPED_TARGET} by default"
    config["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL_S}s"
    config["global"]["scrape_timeout"] = f"{SCRAPE_INTERVAL_S}s"
    return dict(config)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    tool("prometheus")
    tool("promtool")
    root = tmp_path_factory.mktemp("prom-stack")
    settings = Settings(data_dir=root / "data", partitions_events=2, partitions_items=1)
    with LocalStack(settings, log_dir=root) as running:
        publisher = Publisher(settings, running.bootstrap)
        for item_id, title, category in ITEMS:
            publisher.item({"item_id": item_id, "title": title, "category": category})
        publisher.flush()
        assert running.worker is not None
        running.worker.wait_for("coldstream_items_indexed_total", len(ITEMS), timeout_s=180)
        yield running


@pytest.fixture(scope="module")
def prometheus(
    stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    assert stack.worker is not None
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config_for(f"127.0.0.1:{stack.worker.metrics_port}")))
    check = subprocess.run(
        [tool("promtool"), "check", "config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with PrometheusServer(tool("prometheus"), config, root) as server:
        server.wait_value('up{job="coldstream"}', 1, timeout_s=60)
        yield server


@pytest.fixture(scope="module")
def publisher(stack: LocalStack) -> Publisher:
    return Publisher(stack.settings, stack.bootstrap)


def publish(publisher: Publisher, events: list[dict[str, object]]) -> None:
    for payload in events:
        publisher.event(payload)
    publisher.flush()


@pytest.mark.parametrize("config", [SHIPPED_CONFIG, DEPLOY_CONFIG], ids=["shipped", "compose"])
def test_promtool_accepts_the_shipped_configs(config: Path) -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


JOB = '{job="coldstream"}'
CONSUMED = f"sum(coldstream_events_consumed_total{JOB})"


@pytest.fixture(scope="module")
def first_traffic(
    stack: LocalStack, prometheus: PrometheusServer, publisher: Publisher
) -> dict[str, float]:
    """Clicks and views, one undecodable event (dead-lettered) and one retirement of an unknown
    item (skipped), all scraped by Prometheus; returns the counters Prometheus then shows."""
    assert stack.worker is not None
    before = prometheus.value(CONSUMED) or 0.0
    first = click_events(9) + click_events(3, kind="view")
    publish(publisher, first)
    publisher.send_raw(stack.settings.topic_events, "dlq-user", b'{"event_id": "x", "user_id": ')
    publisher.item({"item_id": "no-such-item", "active": False})
    publisher.flush()
    sent = len(first) + 1  # the undecodable one is counted as type="invalid"
    stack.worker.wait_for("coldstream_events_consumed_total", before + sent, timeout_s=120)
    return {
        "consumed": prometheus.wait_value(CONSUMED, before + sent),
        "recommendations": prometheus.wait_value(
            f"sum(coldstream_recommendations_emitted_total{JOB})", 1
        ),
        "dead_letters": prometheus.wait_value(
            'sum(coldstream_dead_letters_total{job="coldstream",reason="bad_json"})', 1
        ),
        "skipped": prometheus.wait_value(
            'sum(coldstream_events_skipped_total{job="coldstream",reason="retire_unknown_item"})',
            1,
        ),
    }


def test_series_exist_and_move_when_events_flow(
    stack: LocalStack,
    prometheus: PrometheusServer,
    publisher: Publisher,
    first_traffic: dict[str, float],
) -> None:
    by_type = {
        r["metric"]["type"]: float(r["value"][1])
        for r in prometheus.query(f"sum by (type) (coldstream_events_consumed_total{JOB})")
    }
    assert by_type.get("click", 0) >= 9 and by_type.get("view", 0) >= 3, by_type
    assert by_type.get("invalid", 0) >= 1, by_type
    items = prometheus.value(f"sum(coldstream_items_indexed_total{JOB})")
    assert items is not None and items >= len(ITEMS)
    assert first_traffic["recommendations"] > 0
    assert first_traffic["dead_letters"] >= 1 and first_traffic["skipped"] >= 1
    assert prometheus.wait_value(f"sum(coldstream_profile_updates_total{JOB})", 1) > 0
    # lag per assigned partition: 2 event partitions and 1 item partition in this stack
    assert prometheus.wait_value(f"count(coldstream_consumer_lag{JOB})", 3) >= 3

    # the latency histogram: cumulative buckets from 1 ms to 10 s, observations counted
    buckets = prometheus.query(f"coldstream_event_to_recommendation_seconds_bucket{JOB}")
    bounds = {r["metric"]["le"] for r in buckets}
    assert {"0.001", "10.0", "+Inf"} <= bounds, bounds
    assert prometheus.wait_value(f"coldstream_event_to_recommendation_seconds_count{JOB}", 1) > 0
    # other stages report too: per-agent batch sizes, encoder passes, store calls by operation
    agents = {r["metric"]["agent"] for r in prometheus.query(f"coldstream_batch_size_count{JOB}")}
    assert {"items", "events"} <= agents, agents
    assert (prometheus.value(f"coldstream_encoder_batch_size_count{JOB}") or 0) > 0
    operations = prometheus.query(f"coldstream_store_operation_duration_seconds_count{JOB}")
    assert operations and all(r["metric"].get("operation") for r in operations)
    ranker = prometheus.query(f"coldstream_ranker_info{JOB} == 1")
    assert len(ranker) == 1 and ranker[0]["metric"].get("version"), ranker

    # more events → the counters move between scrapes, and rate() sees it
    second = click_events(15)
    publish(publisher, second)
    after = prometheus.wait_value(CONSUMED, first_traffic["consumed"] + len(second))
    assert after > first_traffic["consumed"]
    recs = f"sum(coldstream_recommendations_emitted_total{JOB})"
    assert prometheus.wait_value(recs, first_traffic["recommendations"] + 1)
    rate = prometheus.value(f"sum(rate(coldstream_events_consumed_total{JOB}[1m]))")
    assert rate is not None and rate > 0
    p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(coldstream_event_to_recommendation_seconds_bucket{JOB}[1m])))"
    )
    assert p99 is not None and math.isfinite(p99) and 0 < p99 <= 10, p99


def test_promtool_check_metrics_passes_on_worker_output(
    stack: LocalStack, prometheus: PrometheusServer
) -> None:
    assert stack.worker is not None
    with urllib.request.urlopen(stack.worker.metrics_url, timeout=5) as resp:
        text = resp.read()
    assert b"coldstream_event_to_recommendation_seconds_bucket" in text
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    out = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"promtool check metrics found problems:\n{out}"


def test_every_dashboard_query_is_valid_promql_with_data(
    prometheus: PrometheusServer, first_traffic: dict[str, float]
) -> None:
    """Each Grafana panel's expression, evaluated by the real server, parses and returns data
    once events have flowed (consumer lag excepted: see NOT_YET_FED)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        if panel.get("type") != "row"
        for target in panel.get("targets", [])
    ]
    assert exprs
    empty = []
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        concrete = concrete.replace("$job", "coldstream").replace("${job}", "coldstream")
        assert "$" not in concrete, f"unresolved variable in {expr!r}"
        if not prometheus.query(concrete):
            empty.append(expr)
    missing = [e for e in empty if not any(name in e for name in NOT_YET_FED)]
    assert not missing, f"dashboard queries with no data: {missing}"


def test_the_worker_reports_itself_alive_and_ready(
    stack: LocalStack, first_traffic: dict[str, float]
) -> None:
    """The probes an orchestrator uses, on the real worker's metrics port, after traffic."""
    assert stack.worker is not None
    base = f"http://127.0.0.1:{stack.worker.metrics_port}"
    with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
        alive = json.loads(resp.read())
    assert resp.status == 200 and alive["status"] == "alive" and alive["beats"] > 0, alive
    with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
        ready = json.loads(resp.read())
    assert resp.status == 200 and ready["status"] == "ready", ready
    assert ready["started"] is True
    assert ready["dependencies"] == {"encoder": "up", "store": "up"}, ready
