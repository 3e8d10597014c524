"""The rules file and the dashboards without a running server: promtool's checks and unit
tests of the alerts, the dashboards' structure, and the expression handling the Prometheus
test relies on."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .promql import (
    DASHBOARDS,
    RULES_FILE,
    _panels,
    dashboard_queries,
    label_values,
    metric_names,
    rule_queries,
    substitute,
    with_bool,
)

ALERT_TESTS = Path(__file__).with_name("alerts.test.yaml")
# Where each series of the dashboards and rules comes from (README, "Monitoring").
SOURCES = ("tutor_gateway_", "tutor_engine_", "tutor_operator_", "vllm:", "kube_pod_")
GRID_WIDTH = 24


def test_promtool_checks_the_rules_file(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = sum(len(g["rules"]) for g in yaml.safe_load(RULES_FILE.read_text())["groups"])
    assert f"SUCCESS: {alerts} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The check has teeth: a syntax error in an expression fails it."""
    broken = yaml.safe_load(RULES_FILE.read_text())
    broken["groups"][0]["rules"][0]["expr"] = "sum by (tutor_id (rate(x[5m]))"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True)
    assert result.returncode != 0


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    names = []
    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        assert group["name"].startswith("tutor-serving.")
        for rule in group["rules"]:
            names.append(rule["alert"])
            assert re.fullmatch(r"Tutor[A-Z][A-Za-z]+", rule["alert"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert len(names) == len(set(names))
    # What the issue asks for, at least.
    assert {
        "TutorVoiceSloSlow",
        "TutorColdStartSlow",
        "TutorSessionsRejected",
        "TutorEngineCrashLooping",
        "TutorOperatorReconcileErrors",
    } <= set(names)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"].startswith("tutor-serving-") and len(board["uid"]) <= 40
    assert board["title"].startswith("Tutor serving / ")
    assert board["schemaVersion"] >= 36 and "tutor-serving" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    areas: list[tuple[int, int, int, int, str]] = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= GRID_WIDTH, panel
        for x, y, w, h, other in areas:
            overlap = (
                grid["x"] < x + w
                and x < grid["x"] + grid["w"]
                and grid["y"] < y + h
                and y < grid["y"] + grid["h"]
            )
            assert not overlap, f"{panel['title']!r} overlaps {other!r} in {path.name}"
        areas.append((grid["x"], grid["y"], grid["w"], grid["h"], panel["title"]))
        if panel["type"] == "row":
            assert "repeat" not in panel or panel["repeat"] in variables
            continue
        assert panel["type"] in ("timeseries", "stat"), panel["type"]
        assert panel["title"] and panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
            used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", target["expr"]))
            assert used <= set(variables) | {"__rate_interval"}, (panel["title"], used)


def test_dashboard_uids_and_titles_are_unique() -> None:
    boards = [json.loads(p.read_text()) for p in DASHBOARDS]
    assert {p.stem for p in DASHBOARDS} >= {"fleet", "voice-latency", "errors"}
    assert len({b["uid"] for b in boards}) == len({b["title"] for b in boards}) == len(boards)


def test_the_dashboards_show_what_the_issue_asks_for() -> None:
    text = {p.stem: p.read_text() for p in DASHBOARDS}
    for metric in (
        "tutor_gateway_sessions",
        "tutor_operator_engines",
        "tutor_operator_cold_start_seconds",
        "kube_pod_container_resource_requests",  # GPU pods
    ):
        assert metric in text["fleet"], metric
    for stage in ("tutor_engine_first_audio_seconds", "tutor_engine_stage_seconds"):
        assert stage in text["voice-latency"]
    exprs = [q.shipped for q in dashboard_queries() if "voice-latency" in q.where]
    for quantile in ("0.5", "0.95"):
        assert any(f"histogram_quantile({quantile}, sum by (stage, le)" in e for e in exprs)
        assert any(
            f"histogram_quantile({quantile}, sum by (tutor_id, le)" in e and "first_audio" in e
            for e in exprs
        )
    for metric in ("tutor_engine_errors_total", "tutor_operator_api_errors_total"):
        assert metric in text["errors"]


def test_every_expression_reads_series_of_the_known_sources() -> None:
    for query in dashboard_queries() + rule_queries():
        names = metric_names(query.expr)
        assert names, query
        for name in names - {"up"}:
            assert name.startswith(SOURCES), (query.where, name)


def test_evaluated_expressions_have_no_grafana_variables_left() -> None:
    for query in dashboard_queries():
        assert "$" not in query.expr, query


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("a > 2", "a > bool 2"),
        ('up{job=~"a|b"} == 0', 'up{job=~"a|b"} == bool 0'),
        (
            'sum(rate(x{le="2.0"}[5m])) / sum(y) > 0.05',
            'sum(rate(x{le="2.0"}[5m])) / sum(y) > bool 0.05',
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(x[5m])))",
            "histogram_quantile(0.95, sum by (le) (rate(x[5m])))",
        ),
        ('max(x{a!="b"}) >= 3', 'max(x{a!="b"}) >= bool 3'),
        ("a > bool 2", "a > bool 2"),
    ],
)
def test_with_bool_changes_only_the_top_level_comparison(expr: str, expected: str) -> None:
    assert with_bool(expr) == expected


def test_grafana_variables_become_promql() -> None:
    assert (
        substitute('rate(x{namespace=~"$namespace", tutor_id=~"${tutor}"}[$__rate_interval])')
        == 'rate(x{namespace=~"tutors", tutor_id=~".*"}[5m])'
    )
    assert (
        label_values('label_values(m{a="b, c"}, tutor_id)') == 'count by (tutor_id) (m{a="b, c"})'
    )
