"""The PromQL the chart ships, and a real Prometheus server to evaluate it against.

- ``dashboard_queries()`` / ``rule_queries()``: every expression of ``dashboards/*.json``
  (panel targets and variable queries) and ``rules/tutor-serving.rules.yaml``, each with where
  it comes from, ready to evaluate: Grafana variables substituted (``$tutor``: a regex matching
  all), ``label_values(m, l)`` as ``count by (l) (m)``, an alert's comparison with ``bool`` so
  a rule that does not fire still returns its series.
- ``PrometheusServer``: Debian's ``prometheus`` on 127.0.0.1 with a config written to a temp
  directory; targets come from ``file_sd`` files the test rewrites as servers appear.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.cluster import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tutor-serving"
RULES_FILE = CHART / "rules" / "tutor-serving.rules.yaml"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))

# Values for the dashboards' variables when evaluated outside Grafana.
VARIABLES = {
    "namespace": "tutors",  # every test target gets this namespace label, as in a cluster
    "tutor": ".*",
    "__rate_interval": "5m",  # longer than the whole test: every increase is in the window
}
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


@dataclass(frozen=True)
class Query:
    """One expression to evaluate: ``where`` it comes from, the shipped text, the evaluated."""

    where: str
    shipped: str
    expr: str


def substitute(expr: str, variables: dict[str, str] = VARIABLES) -> str:
    """Replace ``$name`` and ``${name}`` (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def label_values(query: str) -> str:
    """Grafana's ``label_values(metric{...}, label)`` as PromQL returning those labels."""
    inner = query.strip()
    assert inner.startswith("label_values(") and inner.endswith(")"), query
    inner = inner[len("label_values(") : -1]
    depth = 0
    for i, char in enumerate(inner):
        depth += char in "({["
        depth -= char in ")}]"
        if char == "," and depth == 0:
            return f"count by ({inner[i + 1 :].strip()}) ({inner[:i].strip()})"
    raise AssertionError(f"label_values with one argument: {query}")


def top_level_comparison(expr: str) -> int | None:
    """Index just after the last comparison operator outside brackets and strings."""
    depth, quote, found, i = 0, "", None, 0
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif depth == 0:
            for op in COMPARISONS:
                if expr.startswith(op, i) and not expr.startswith("=~", i):
                    found = i + len(op)
                    i += len(op) - 1
                    break
        i += 1
    return found


def with_bool(expr: str) -> str:
    """``a > 2`` as ``a > bool 2``: a series for every input, firing or not."""
    at = top_level_comparison(expr)
    if at is None or expr[at:].lstrip().startswith("bool"):
        return expr
    return f"{expr[:at]} bool{expr[at:]}"


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> list[Query]:
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                text = variable["query"]["query"]
                where = f"{path.name} variable ${variable['name']}"
                queries.append(Query(where, text, substitute(label_values(text))))
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                where = f"{path.name} panel {panel['id']} {panel['title']!r} {target['refId']}"
                queries.append(Query(where, target["expr"], substitute(target["expr"])))
    return queries


def rule_queries() -> list[Query]:
    queries = []
    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            queries.append(Query(f"rules {name}", rule["expr"], with_bool(rule["expr"])))
    return queries


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        following = text[match.end() :].lstrip()[:1]
        word = match.group()
        if following != "(" and word.lower() not in KEYWORDS:
            names.add(word)
    return names


# ---------------------------------------------------------------- the server


class PrometheusServer:
    """``prometheus`` on 127.0.0.1:``port``: scrape every second, rules from ``rule_files``,
    one ``file_sd`` file per job under ``directory`` (``set_targets`` rewrites it)."""

    def __init__(
        self,
        binary: str,
        directory: Path,
        port: int,
        jobs: dict[str, list[dict[str, Any]]],
        rule_files: list[Path],
    ) -> None:
        self.binary, self.directory, self.port = binary, directory, port
        self.jobs = jobs
        self.log = directory / "prometheus.log"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "file_sd_configs": [
                        {"files": [str(self._sd_file(job))], "refresh_interval": "1s"}
                    ],
                    "relabel_configs": relabel,
                }
                for job, relabel in jobs.items()
            ],
        }
        for job in jobs:
            self.set_targets(job, [])
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def _sd_file(self, job: str) -> Path:
        return self.directory / f"targets-{job}.json"

    def set_targets(self, job: str, groups: list[dict[str, Any]]) -> None:
        """Replace the job's targets: ``[{"targets": ["host:port"], "labels": {...}}]``."""
        path = self._sd_file(job)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(groups))
        temporary.replace(path)  # atomic: Prometheus never reads half a file

    def start(self) -> PrometheusServer:
        storage = self.directory / "data"
        storage.mkdir()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 60, f"prometheus ready (log {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.logs()
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def api(self, path: str, **params: Any) -> Any:
        response = self.http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def active_targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def scraped_since(self, moment: float, jobs: set[str] | None = None) -> bool:
        """Whether every active target (of ``jobs``) was scraped, successfully, after ``moment``
        (a ``time.time()``)."""
        targets = [t for t in self.active_targets() if jobs is None or t["labels"]["job"] in jobs]
        if not targets or (jobs and {t["labels"]["job"] for t in targets} != jobs):
            return False
        for target in targets:
            last = target.get("lastScrape", "")
            if target["health"] != "up" or not last or last.startswith("0001"):
                return False
            if _epoch(last) <= moment:
                return False
        return True

    def wait_scraped(self, jobs: set[str] | None = None, timeout: float = 30) -> None:
        """Until every active target (of ``jobs``) has been scraped since now, up."""
        moment = time.time()
        wait_for(
            lambda: self.scraped_since(moment, jobs),
            timeout,
            f"a scrape of every target of {sorted(jobs) if jobs else 'every job'}: "
            + str(
                [
                    (t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"])
                    for t in self.active_targets()
                ]
            ),
        )

    def wait_rules_evaluated(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Until every rule group has been evaluated since now; its groups."""
        moment = time.time()

        def evaluated() -> list[dict[str, Any]] | None:
            groups = self.api("rules")["groups"]
            done = all(
                _epoch(g["lastEvaluation"]) > moment for g in groups if g.get("lastEvaluation")
            )
            return groups if groups and done else None

        return wait_for(evaluated, timeout, "every rule group evaluated again")


def _epoch(stamp: str) -> float:
    """A Prometheus RFC 3339 time (nanoseconds, Z or an offset) as seconds since the epoch."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp)
    assert match, stamp
    whole, fraction, zone = match.groups()
    parsed = dt.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return parsed.timestamp() + float(f"0.{fraction or 0}")


def finite(result: list[dict[str, Any]]) -> bool:
    """Whether at least one sample of an instant vector is a number (not NaN or ±Inf)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def prometheus_binaries() -> tuple[str | None, str | None]:
    return shutil.which("prometheus"), shutil.which("promtool")
