"""Stand-ins for the two exporters a cluster has and this machine cannot run, so that the
dashboards' and alerts' expressions on their series are evaluated too:

- ``KubeStateMetrics``: the few kube-state-metrics (v2) series the chart reads, computed at
  each scrape from the pods in the Kubernetes API emulator (the fake kubelet's restarts,
  phases, and the GPU requests of the operator's pod template), with kube-state-metrics' own
  names, labels and resource-name sanitising (``nvidia.com/gpu`` -> ``nvidia_com_gpu``).
- ``FakeVllm``: vLLM's own metric objects, as ``vllm/v1/metrics/loggers.py`` (v0.11) defines
  them with prometheus_client (names, label names ``engine`` and ``model_name``, buckets), fed
  one request per engine turn of the test; the engine's mock LLM stands in for the server.

Both are documented exceptions: the series are real Prometheus exposition, but their values
come from the test, not from kube-state-metrics or vLLM.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


class _Server:
    """An HTTP server on 127.0.0.1 answering ``GET /metrics`` with ``self.render()``."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = owner.render()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def render(self) -> bytes:
        raise NotImplementedError

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _sanitise(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}"


class KubeStateMetrics(_Server):
    """kube-state-metrics over the emulator's pods of one namespace."""

    def __init__(self, api_url: str, namespace: str, token: str) -> None:
        super().__init__()
        self.api_url, self.namespace, self.token = api_url, namespace, token

    def _pods(self) -> Iterator[dict[str, Any]]:
        response = httpx.get(
            f"{self.api_url}/api/v1/namespaces/{self.namespace}/pods",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=5,
        )
        response.raise_for_status()
        yield from response.json()["items"]

    def render(self) -> bytes:
        restarts, phases, requests = [], [], []
        for pod in self._pods():
            meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
            base = {"namespace": meta["namespace"], "pod": meta["name"], "uid": meta["uid"]}
            for container in status.get("containerStatuses") or []:
                labels = _labels(**base, container=container["name"])
                restarts.append(
                    f"kube_pod_container_status_restarts_total{labels} {container['restartCount']}"
                )
            phase = status.get("phase", "Pending")
            for name in POD_PHASES:
                phases.append(
                    f"kube_pod_status_phase{_labels(**base, phase=name)} {int(name == phase)}"
                )
            for container in spec["containers"]:
                for resource, value in (
                    container.get("resources", {}).get("requests") or {}
                ).items():
                    if "/" not in resource:
                        continue  # cpu and memory need unit parsing; the chart reads GPUs only
                    labels = _labels(
                        **base,
                        container=container["name"],
                        node=spec.get("nodeName", ""),
                        resource=_sanitise(resource),
                        unit="integer",
                    )
                    requests.append(f"kube_pod_container_resource_requests{labels} {value}")
        text = [
            "# HELP kube_pod_container_status_restarts_total The number of container restarts "
            "per container.",
            "# TYPE kube_pod_container_status_restarts_total counter",
            *restarts,
            "# HELP kube_pod_status_phase The pods current phase.",
            "# TYPE kube_pod_status_phase gauge",
            *phases,
            "# HELP kube_pod_container_resource_requests The number of requested request "
            "resource by a container.",
            "# TYPE kube_pod_container_resource_requests gauge",
            *requests,
        ]
        return ("\n".join(text) + "\n").encode()


class FakeVllm(_Server):
    """vLLM's metrics of one served model, advanced by ``request()``."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.registry = r = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.model = model
        self.running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels,
            registry=r,
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels,
            registry=r,
        )
        self.kv_cache = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            labels,
            registry=r,
        )
        self.generation = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                     2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0],
            registry=r,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._values = (model, "0")
        for metric in (self.running, self.waiting, self.kv_cache, self.generation, self.ttft):
            metric.labels(*self._values)

    def request(self, first_token_seconds: float = 0.05, tokens: int = 12) -> None:
        """One chat completion served."""
        with self._lock:
            self.ttft.labels(*self._values).observe(first_token_seconds)
            self.generation.labels(*self._values).inc(tokens)
            self.kv_cache.labels(*self._values).set(0.02)

    def render(self) -> bytes:
        with self._lock:
            return generate_latest(self.registry)
