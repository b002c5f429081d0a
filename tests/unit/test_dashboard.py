"""The Grafana dashboard (infra/grafana/coldstream.json) only queries metrics the code exports.

Every metric name in every panel's PromQL is resolved against :data:`infra.metrics.REGISTRY`,
with the sample names Prometheus actually stores: ``<name>_total`` (and ``_created``) for a
counter, ``<name>_bucket``/``_sum``/``_count`` for a histogram, ``<name>`` for a gauge. A renamed
metric, a typo or a ``_bucket`` on a non-histogram fails here, not in an operator's empty graph.
(tests/integration/test_prometheus.py also evaluates every expression on a real Prometheus.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from infra.metrics import REGISTRY

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "coldstream.json"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}

# PromQL words that are not metric names (functions, aggregations, keywords used here).
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "abs", "clamp_min", "clamp_max", "label_replace", "vector",
    "scalar", "time", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
    "last_over_time", "absent", "sort", "sort_desc", "round", "ceil", "floor", "inf", "nan",
}  # fmt: skip


def exported_sample_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = _SUFFIXES.get(family.type)
        assert suffixes is not None, f"unexpected metric type {family.type} of {family.name}"
        names.update(family.name + suffix for suffix in suffixes)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, ranges and groupings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", text)  # numbers
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w not in _PROMQL_WORDS}


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in load()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels nested in collapsed rows
    return [p for p in found if p.get("type") != "row"]


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, operation) (rate(coldstream_x_bucket{job=~"$job",'
        ' a="b c"}[$__rate_interval]))) / on (job) group_left sum(coldstream_y_total) > 1e3'
    )
    assert metric_names(expr) == {"coldstream_x_bucket", "coldstream_y_total"}


def test_every_panel_has_a_target_and_every_query_names_exported_metrics() -> None:
    exported = exported_sample_names()
    assert "coldstream_events_consumed_total" in exported
    assert "coldstream_event_to_recommendation_seconds_bucket" in exported
    found = panels()
    assert found
    for panel in found:
        title = panel.get("title", panel.get("id"))
        targets = panel.get("targets") or []
        assert targets, f"panel {title!r} has no target"
        for target in targets:
            expr = target.get("expr", "")
            assert expr.strip(), f"panel {title!r} has a target without a PromQL expr"
            names = metric_names(expr)
            assert names, f"panel {title!r}: no metric in {expr!r}"
            unknown = names - exported
            assert not unknown, f"panel {title!r} queries metrics not exported: {sorted(unknown)}"


def test_quantiles_are_taken_over_histogram_buckets() -> None:
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            if "histogram_quantile" in expr:
                assert all(n.endswith("_bucket") for n in metric_names(expr)), expr
                assert "by (le" in expr, f"histogram_quantile must aggregate by le: {expr}"


def test_datasource_is_a_prometheus_variable() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        refs = [panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])]
        for ref in refs:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, (panel["title"], ref)


def test_dashboard_covers_the_operators_questions() -> None:
    used = set().union(*(metric_names(t["expr"]) for p in panels() for t in p["targets"]))
    for needed in (
        "coldstream_events_consumed_total",
        "coldstream_recommendations_emitted_total",
        "coldstream_event_to_recommendation_seconds_bucket",
        "coldstream_dead_letters_total",
        "coldstream_encoder_batch_size_bucket",
        "coldstream_encoder_batch_duration_seconds_bucket",
        "coldstream_store_operation_duration_seconds_bucket",
        "coldstream_batch_size_bucket",
        "coldstream_consumer_lag",
        "coldstream_dependency_up",
    ):
        assert needed in used, f"no panel shows {needed}"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
