"""Every PromQL expression of the chart's dashboards and alerts, evaluated against a real
Prometheus that scraped real servers while students talked to tutors.

What runs, all on 127.0.0.1:

- Debian's ``prometheus`` (scrape and rule evaluation every second, config in a temp
  directory), with the chart's rules file loaded; one ``file_sd`` file per job, rewritten as
  servers appear. Each job's relabelling is the chart's own ServiceMonitor or PodMonitor
  relabelling (rendered by Helm), after the namespace and pod labels the Prometheus Operator
  adds; every target is in namespace ``tutors``.
- the Kubernetes API emulator, the fake kubelet (engine pods as ``python -m tutor_engine``
  processes with mock models) and the real operator (``python -m tutor_operator``, metrics on
  a port of its own), under the chart's RBAC;
- a gateway in kubernetes mode on that emulator, and a gateway process in local mode with its
  own engine process;
- kube-state-metrics and vLLM stand-ins (tests/monitoring/exporters.py, a documented exception:
  the only expressions fed by the test rather than by our servers).

Two rounds of the same conversation (sessions up to the limits, a text turn, a spoken turn, a
bad message, refusals, deletes) run on both gateways, and in each an engine process is killed
under an open socket (a failover) and a student waits in vain for an engine that cannot be
scheduled (4503, through a gateway replica with a one-second wait), with Prometheus scraping
every target in between, so counters move and histograms have rates. Then every expression
must return at least one finite sample; an alert's comparison is evaluated with ``bool`` so a
quiet alert still returns its series. The failure message lists each expression without data
and the metrics in it that Prometheus has never seen.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from tutor_engine.backends.mock import make_wav
from tutor_gateway.frames import CLOSE_ENGINE_UNAVAILABLE, CLOSE_UNAUTHORIZED
from websockets.sync.client import ClientConnection

from tests.gateway.helpers import create_session, open_ws, recv, say, send_audio
from tests.gateway.test_websocket import closed_with
from tests.servers import RunningServer
from tests.support.chart_rbac import chart_rbac
from tests.support.cluster import ENGINE_KEY, NAMESPACE, KubeClient, OperatorProcess, wait_for
from tests.support.kube_emulator import ADMIN_TOKEN, RunningEmulator
from tests.support.processes import (
    ServerProcess,
    free_port,
    gateway_argv,
    gateway_env,
    launch_server,
    stop_server,
    wait_ready,
)

from .exporters import FakeVllm, KubeStateMetrics
from .promql import (
    CHART,
    RULES_FILE,
    PrometheusServer,
    Query,
    dashboard_queries,
    finite,
    metric_names,
    rule_queries,
)

pytestmark = pytest.mark.timeout(300)

CLUSTER_TUTOR, LOCAL_TUTOR, PENDING_TUTOR = 2, 5, 9
# A session living through the test and two a round fill a gateway (the cluster one holds
# the pending session too): the next is refused at MAX_SESSIONS.
MAX_SESSIONS = 4
JOBS = ("tutor-gateway", "tutor-operator", "tutor-engine", "tutor-vllm", "kube-state-metrics")
# What the Prometheus Operator puts before a monitor's own relabelings.
OPERATOR_RELABELING = [
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
]


def _snake(relabeling: dict[str, Any]) -> dict[str, Any]:
    """A monitor's relabeling (camelCase) as a Prometheus relabel_config."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {keys.get(k, k.lower()): v for k, v in relabeling.items()}


def chart_relabelings() -> dict[str, list[dict[str, Any]]]:
    """Each job's relabel_configs: the chart's monitors, as Helm renders them."""
    values = {
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "vllmMetrics": True,
        }
    }
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="tutor", namespace=NAMESPACE)
    jobs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc or doc.get("kind") not in ("ServiceMonitor", "PodMonitor"):
                continue
            spec = doc["spec"]
            for endpoint in spec.get("endpoints", []) + spec.get("podMetricsEndpoints", []):
                relabel = [_snake(r) for r in endpoint["relabelings"]]
                (job,) = [r["replacement"] for r in relabel if r["target_label"] == "job"]
                jobs[job] = OPERATOR_RELABELING + relabel
    assert set(jobs) == {"tutor-gateway", "tutor-operator", "tutor-engine", "tutor-vllm"}
    jobs["kube-state-metrics"] = []  # its series carry namespace and pod themselves
    return jobs


def target(address: str, pod: str = "", **labels: str) -> dict[str, Any]:
    meta = {"__meta_kubernetes_namespace": NAMESPACE, "__meta_kubernetes_pod_name": pod or address}
    return {"targets": [address], "labels": {**meta, **labels}}


class Stage:
    """Everything the test started, and what Prometheus is told to scrape."""

    def __init__(
        self,
        prometheus: PrometheusServer,
        kube: KubeClient,
        cluster_gateway: RunningServer,
        local_gateway: ServerProcess,
        vllm: FakeVllm,
    ) -> None:
        self.prometheus, self.kube = prometheus, kube
        self.cluster_gateway, self.local_gateway, self.vllm = cluster_gateway, local_gateway, vllm
        self.engines: dict[str, dict[str, Any]] = {}

    def engine_targets(self) -> None:
        """Point the tutor-engine job at every engine running now; wait until each was scraped
        (engine histograms then start from zero in Prometheus, before any turn)."""
        found = dict(self.engines)
        for pod in self.kube.list("pods", "app.kubernetes.io/name=tutor-engine"):
            status = pod.get("status") or {}
            ip = status.get("podIP")
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
            )
            if ip and ready:
                port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
                tutor = pod["metadata"]["labels"]["tutor.vts.dev/tutor-id"]
                found[pod["metadata"]["name"]] = target(
                    f"{ip}:{port}",
                    pod["metadata"]["name"],
                    __meta_kubernetes_pod_label_tutor_vts_dev_tutor_id=tutor,
                )
        for pid, port in self.local_gateway.engines().items():
            if port:
                found[f"local-{pid}"] = target(f"127.0.0.1:{port}", f"local-engine-{pid}")
        if found != self.engines:
            self.engines = found
            self.prometheus.set_targets("tutor-engine", list(found.values()))
        self.prometheus.wait_scraped({"tutor-engine"})


def spoken_turn(ws: ClientConnection, text: str) -> list[dict[str, Any]]:
    """Send speech (the mock ASR reads ``text`` from the WAV); the replies up to the audio."""
    send_audio(ws, make_wav(text))
    replies = []
    while not replies or replies[-1]["type"] != "audio":
        replies.append(recv(ws))
        assert replies[-1]["type"] != "error", replies
    return replies


def refused(gateway_http: str, student: int, tutor: int) -> int:
    response = httpx.post(
        f"{gateway_http}/v1/sessions", json={"tutor_id": tutor, "student_id": student}
    )
    assert response.status_code in (429, 503), response.text
    return response.status_code


def start_talking(stage: Stage, server: Any, tutor: int) -> dict[str, Any]:
    """A session that lives through the test (its engine too: a local engine stops when its
    tutor has no session); its first turn starts the engine, which is then scraped."""
    keeper = create_session(server, tutor_id=tutor, student_id=50)
    with open_ws(server, keeper) as ws:
        assert say(ws, "hello")["type"] == "text"
    stage.engine_targets()
    return keeper


def conversation(stage: Stage, server: Any, tutor: int) -> None:
    """One round on one gateway: sessions up to its limits, refusals, talk, errors, ends."""
    first = create_session(server, tutor_id=tutor, student_id=1)
    assert refused(server.http, student=1, tutor=tutor) == 429  # MAX_SESSIONS_PER_STUDENT
    second = create_session(server, tutor_id=tutor, student_id=2)
    assert refused(server.http, student=3, tutor=tutor) == 503  # MAX_SESSIONS
    with open_ws(server, first, token="wrong-token") as ws:
        closed_with(ws, CLOSE_UNAUTHORIZED)
    stage.engine_targets()
    with open_ws(server, first) as ws:
        assert say(ws, "hello")["type"] == "text"
        stage.vllm.request()
        kinds = [m["type"] for m in spoken_turn(ws, "what is a vector")]
        assert kinds[0] == "transcription", kinds
        stage.vllm.request()
        ws.send(json.dumps({"type": "no-such-type"}))
        assert recv(ws)["type"] == "error"
    with open_ws(server, second) as ws:
        assert say(ws, "and a matrix?")["type"] == "text"
        stage.vllm.request()
    for session in (first, second):
        assert httpx.delete(f"{server.http}/v1/sessions/{session['session_id']}").status_code == 204
    # A 404 of the REST API (a session that ended; the emulator's 404 of a never-seen name
    # carries a Content-Type lightkube does not take for a Status).
    assert httpx.get(f"{server.http}/v1/sessions/{first['session_id']}").status_code == 404


def failover(server: Any, keeper: dict[str, Any], kubelet: Any, tutor: int) -> None:
    """The engine pod's process dies under an open socket; the kubelet restarts it and the
    socket goes on (a failover, a wait for the engine, a container restart)."""
    with open_ws(server, keeper) as ws:
        assert say(ws, "before")["type"] == "text"
        ((pod, pid),) = [
            (name, pid)
            for name, pid in kubelet.processes().items()
            if name.startswith(f"tutor-{tutor}-")
        ]
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: kubelet.processes().get(pod) not in (None, pid), 60, "the engine's restart"
        )
        reply = say(ws, "still there?")
        assert reply["type"] == "text", reply


def no_engine_in_time(impatient: RunningServer, session: dict[str, Any]) -> None:
    """A student waits for an engine that cannot start (its pods are unschedulable): 4503."""
    with open_ws(impatient, session) as ws:
        closed_with(ws, CLOSE_ENGINE_UNAVAILABLE)


@pytest.fixture
def local_gateway(tmp_path: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = gateway_env(
        port, tmp_path / "local-state", MAX_SESSIONS=MAX_SESSIONS - 1, MAX_SESSIONS_PER_STUDENT=1
    )
    server = launch_server(gateway_argv(), env, port, tmp_path / "local-gateway.log")
    try:
        wait_ready(server, "/health")
        yield server
    finally:
        stop_server(server)


def _operator_user() -> str:
    """The user the operator's token authenticates as: the chart's operator ServiceAccount."""
    return f"system:serviceaccount:{NAMESPACE}:{chart_rbac(NAMESPACE).accounts['operator']}"


def evaluate(prometheus: PrometheusServer, queries: list[Query]) -> list[str]:
    """What lacks data: each expression with no finite sample, and the metrics in it that
    Prometheus has no series of at all."""
    lacking = []
    for query in queries:
        result = prometheus.query(query.expr)
        if finite(result):
            continue
        unseen = sorted(
            name
            for name in metric_names(query.expr)
            if not prometheus.query(f'count({{__name__="{name}"}})')
        )
        why = f"no series of {unseen}" if unseen else ("only NaN" if result else "no series")
        lacking.append(f"{query.where}: {why}\n    {query.expr}")
    return lacking


def test_every_dashboard_and_alert_expression_returns_data(
    prometheus_binary: str,
    kube_api: RunningEmulator,
    kube: KubeClient,
    kubelet: Any,
    operator_factory: Any,
    gateway_factory: Any,
    local_gateway: ServerProcess,
    tmp_path: Path,
) -> None:
    operator_port = free_port()
    operator: OperatorProcess = operator_factory(TUTOR_OPERATOR_METRICS_PORT=str(operator_port))
    wait_for(
        lambda: _answers(f"http://127.0.0.1:{operator_port}/metrics"), 60, "the operator's /metrics"
    )
    cluster_gateway = gateway_factory(
        gateway_mode="kubernetes",
        kube_api_url=kube_api.url,
        kube_namespace=NAMESPACE,
        engine_api_key=ENGINE_KEY,
        activity_patch_interval_seconds=0.2,
        max_sessions=MAX_SESSIONS,
        max_sessions_per_student=1,
    )
    # A tutor whose engine pods can never be scheduled: its session stays Pending.
    stuck = {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorEngine",
        "metadata": {"name": f"tutor-{PENDING_TUTOR}"},
        "spec": {"tutorId": PENDING_TUTOR, "nodeSelector": {"pool": "nowhere"}},
    }
    kube.create("tutorengines", stuck).raise_for_status()
    pending = create_session(cluster_gateway, tutor_id=PENDING_TUTOR, student_id=99)
    # A second replica that waits only a second for an engine: its students get 4503.
    impatient = gateway_factory(
        gateway_mode="kubernetes",
        kube_api_url=kube_api.url,
        kube_namespace=NAMESPACE,
        engine_api_key=ENGINE_KEY,
        engine_start_timeout_seconds=1,
        max_sessions=MAX_SESSIONS,
    )

    (tmp_path / "prometheus").mkdir()
    with (
        KubeStateMetrics(kube_api.url, NAMESPACE, ADMIN_TOKEN) as ksm,
        FakeVllm("Qwen/Qwen2.5-7B-Instruct") as vllm,
    ):
        prometheus = PrometheusServer(
            prometheus_binary,
            tmp_path / "prometheus",
            free_port(),
            chart_relabelings(),
            [RULES_FILE],
        ).start()
        try:
            prometheus.set_targets(
                "tutor-gateway",
                [
                    target(f"127.0.0.1:{cluster_gateway.port}", "gateway-cluster"),
                    target(f"127.0.0.1:{local_gateway.port}", "gateway-local"),
                    target(f"127.0.0.1:{impatient.port}", "gateway-impatient"),
                ],
            )
            prometheus.set_targets(
                "tutor-operator", [target(f"127.0.0.1:{operator_port}", "operator")]
            )
            prometheus.set_targets("kube-state-metrics", [target(ksm.target, "kube-state-metrics")])
            prometheus.set_targets(
                "tutor-vllm",
                [
                    target(
                        vllm.target,
                        f"tutor-{CLUSTER_TUTOR}-vllm",
                        __meta_kubernetes_pod_label_tutor_vts_dev_tutor_id=str(CLUSTER_TUTOR),
                    )
                ],
            )
            prometheus.wait_scraped(set(JOBS) - {"tutor-engine"})
            stage = Stage(prometheus, kube, cluster_gateway, local_gateway, vllm)
            operator_user = _operator_user()
            keeper = start_talking(stage, cluster_gateway, CLUSTER_TUTOR)
            start_talking(stage, local_gateway, LOCAL_TUTOR)
            for _ in range(2):
                # One failed write of the operator a round: its API error counter.
                fault = kube_api.inject("error", 1, user=operator_user)
                conversation(stage, cluster_gateway, CLUSTER_TUTOR)
                conversation(stage, local_gateway, LOCAL_TUTOR)
                failover(cluster_gateway, keeper, kubelet, CLUSTER_TUTOR)
                no_engine_in_time(impatient, pending)
                wait_for(lambda f=fault: kube_api.read(lambda: f.hits), 30, "the injected fault")
                prometheus.wait_scraped(set(JOBS))
            prometheus.wait_scraped(set(JOBS))
            groups = prometheus.wait_rules_evaluated()

            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) == len(rule_queries())
            assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
            down = [t["scrapeUrl"] for t in prometheus.active_targets() if t["health"] != "up"]
            assert down == []
            lacking = evaluate(prometheus, dashboard_queries() + rule_queries())
            assert not lacking, f"{len(lacking)} expressions return no data:\n" + "\n".join(lacking)
        except BaseException:
            print(f"--- prometheus log:\n{prometheus.logs()}")
            print(f"--- local gateway log:\n{local_gateway.log()[-5000:]}")
            raise
        finally:
            prometheus.stop()
    assert operator.process is not None and operator.process.poll() is None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_relabelings_are_the_charts() -> None:
    """The scrape config the test gives Prometheus is derived from the chart's monitors."""
    jobs = chart_relabelings()
    tutor = {
        "source_labels": ["__meta_kubernetes_pod_label_tutor_vts_dev_tutor_id"],
        "target_label": "tutor_id",
    }
    assert tutor in jobs["tutor-vllm"]
    assert tutor not in jobs["tutor-engine"]  # the engine's series carry tutor_id themselves
    assert all(re.fullmatch(r"tutor-[a-z]+|kube-state-metrics", job) for job in jobs)
