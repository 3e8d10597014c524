"""Cluster-mode benchmark against the Kubernetes API emulator (loopback only, bounded).

The gateway (its own process, kubernetes mode), the real operator (its own process), the API
emulator and the fake kubelet (threads of this process) with mock engines. Measures:

- sessions created per second through ``POST /v1/sessions``, sequential and 8 at a time;
- time from ``POST /v1/sessions`` to the first reply on the WebSocket with a warm engine
  (after the operator has settled from the create runs: how long that took is reported too).

    python -m tests.bench.cluster      # writes bench/results/cluster.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.common import free_port, latency_summary, process, write_result
from tests.support.cluster import (
    ENGINE_KEY,
    NAMESPACE,
    KubeClient,
    OperatorProcess,
    chart_cluster,
)
from tests.support.cluster import operator_env as operator_env_of
from tests.support.kubelet import FakeKubelet

TUTOR = 1


async def create_many(base: str, count: int, concurrency: int) -> dict[str, float]:
    """Create ``count`` sessions with ``concurrency`` requests in flight; sessions per second."""
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(http: httpx.AsyncClient, student: int) -> None:
        async with limit:
            started = time.perf_counter()
            response = await http.post(
                f"{base}/v1/sessions", json={"tutor_id": TUTOR, "student_id": student}
            )
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()

    async with httpx.AsyncClient(timeout=30) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one(http, i) for i in range(count)))
        elapsed = time.perf_counter() - started
    return {
        "sessions": count,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "sessions_per_second": round(count / elapsed, 1),
        **latency_summary(latencies),
    }


async def first_reply(base: str) -> tuple[float, float]:
    """(POST latency, POST → first reply) for one new session on the warm engine."""
    async with httpx.AsyncClient(timeout=30) as http:
        started = time.perf_counter()
        body = (
            await http.post(f"{base}/v1/sessions", json={"tutor_id": TUTOR, "student_id": 1})
        ).json()
        posted = time.perf_counter() - started
        async with connect(f"{body['engine_url']}?token={body['engine_token']}") as ws:
            await ws.send(json.dumps({"type": "text", "content": "hello"}))
            reply = json.loads(await ws.recv())
        total = time.perf_counter() - started
        assert reply["type"] == "text", reply
        await http.delete(f"{base}/v1/sessions/{body['session_id']}")
    return posted, total


def delete_all(kube: KubeClient) -> None:
    for item in kube.list("tutorsessions"):
        kube.delete("tutorsessions", item["metadata"]["name"])


def settle(kube: KubeClient, timeout: float = 300.0) -> float:
    """Seconds until the operator has caught up: the engine reports no sessions left."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        engine = kube.get("tutorengines", f"tutor-{TUTOR}") or {}
        if (engine.get("status") or {}).get("sessions") == 0:
            break
        time.sleep(0.2)
    return round(time.perf_counter() - started, 2)


def main(argv: list[str] | None = None) -> None:
    """Run the cluster benchmark and write its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--round-trips", type=int, default=30)
    args = parser.parse_args(argv)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    operator_env = operator_env_of(engine={"maxSessionsPerReplica": 10000})
    operator_env.pop("TUTOR_OPERATOR_RECONCILE_INTERVAL")  # the production default
    result: dict[str, Any] = {"engine": "mock", "api": "kmock emulator (in-process thread)"}
    with chart_cluster() as api, FakeKubelet(api.url, NAMESPACE):
        kube = KubeClient(api.url)
        kube.create(
            "secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "tutor-engine-key"},
                "data": {"api-key": base64.b64encode(ENGINE_KEY.encode()).decode()},
            },
        )
        logs = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-"))
        token_file = logs / "operator-token"
        token_file.write_text(api.tokens["operator"])
        operator = OperatorProcess(
            api.url, NAMESPACE, operator_env, logs / "operator.log", token_file
        ).start()
        gateway_env = {
            "GATEWAY_MODE": "kubernetes",
            "KUBE_API_URL": api.url,
            "KUBE_NAMESPACE": NAMESPACE,
            "KUBE_API_TOKEN": api.tokens["gateway"],  # the chart's RBAC, as in the tests
            "ENGINE_API_KEY": ENGINE_KEY,
            "MAX_SESSIONS": str(args.sessions * 2 + 100),
            # Sessions as fast as they come, student 1 on every round trip: not the abuse limits.
            "MAX_SESSIONS_PER_STUDENT": str(args.sessions * 2 + 100),
            "MAX_REQUESTS_PER_MINUTE": "1000000",
            "MAX_MESSAGES_PER_SECOND": "1000000",
            "MAX_MESSAGES_BURST": "1000000",
            "MANAGEMENT_API_HOST": "127.0.0.1",
            "MANAGEMENT_API_PORT": str(port),
            "WEBSOCKET_URL": f"ws://127.0.0.1:{port}/ws",
            "LOG_LEVEL": "warning",
        }
        try:
            with process([sys.executable, "-m", "tutor_gateway"], gateway_env, f"{base}/health"):
                warm = asyncio.run(first_reply(base))  # starts the engine pod
                result["cold_start_seconds"] = round(warm[1], 3)
                result["create"] = {
                    "sequential": asyncio.run(create_many(base, args.sessions, 1)),
                }
                delete_all(kube)
                result["create"]["concurrent"] = asyncio.run(create_many(base, args.sessions, 8))
                delete_all(kube)
                result["operator_settle_seconds"] = settle(kube)
                pairs = [asyncio.run(first_reply(base)) for _ in range(args.round_trips)]
                result["post_to_first_reply_warm"] = {
                    "round_trips": len(pairs),
                    "post": latency_summary([p for p, _ in pairs]),
                    "first_reply": latency_summary([t for _, t in pairs]),
                }
        finally:
            operator.stop()
    path = write_result("cluster", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
