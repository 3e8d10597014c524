"""Relay benchmark: text round trips through the gateway, straight to the engine, and to a
single-process reference server, side by side with one client.

Paths: ``reference`` (one uvicorn/FastAPI process that accepts the client WebSocket and
answers each ``text`` with the mock engine's reply frame, same JSON shape, no gateway: the
seed's single-process shape), ``direct`` (the mock engine), ``gateway`` (through the gateway to
that engine). Loopback only, bounded: 1 session × ``--messages-single`` messages, then each of
``--sessions`` concurrent sessions doing ``--messages-total / sessions`` round trips (at least
``MIN_EACH``). Goal (issue 14): gateway ≥ 0.7× the reference's messages/s at 100 and 1,000
sessions. Writes bench/results/relay.json.

    python -m bench.relay
    python -m bench.relay --serve-reference PORT   # the reference server alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psutil
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from tutor_contract.cores import available_cores
from tutor_contract.crd import ENGINE_KEY_HEADER
from websockets.asyncio.client import connect

from .common import cpu_seconds, free_port, latency_summary, process, write_result

Opener = Callable[[], Awaitable[tuple[str, dict[str, str]]]]
GOAL_THROUGHPUT_OVER_REFERENCE = 0.7  # at 100 and 1,000 sessions
MIN_EACH = 3


def reference_app() -> FastAPI:
    """The single-process reference: the mock engine's ``text`` reply, straight back."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/ws/{session_id}")
    async def conversation(websocket: WebSocket, session_id: str) -> None:
        await websocket.accept()
        turns = 0
        try:
            while True:
                message = json.loads(await websocket.receive_text())
                turns += 1
                content = (
                    f"Tutor 1 heard: {message.get('content', '')}. "
                    f"This is turn {turns}, with {2 * (turns - 1)} earlier messages in this "
                    "session."
                )
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                await websocket.send_text(
                    json.dumps(
                        {
                            "type": "text",
                            "content": content,
                            "role": "assistant",
                            "timestamp": stamp,
                        }
                    )
                )
        except WebSocketDisconnect:
            return

    return app


async def _session_loop(
    url: str, headers: dict[str, str], messages: int, warm: asyncio.Barrier
) -> list[float]:
    rtts = []
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "text", "content": "warm up"}))
        await ws.recv()
        await warm.wait()
        for i in range(messages):
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "text", "content": f"question {i}"}))
            reply = json.loads(await ws.recv())
            rtts.append(time.perf_counter() - started)
            assert reply["type"] == "text", reply
    return rtts


async def run_load(
    open_session: Opener, sessions: int, messages: int, server: psutil.Process
) -> dict[str, Any]:
    """``sessions`` warmed-up connections each doing ``messages`` sequential round trips, and
    the CPU each message cost the client (this process) and ``server`` (with its children)."""
    targets = [await open_session() for _ in range(sessions)]
    warm = asyncio.Barrier(sessions + 1)
    loops = [asyncio.create_task(_session_loop(u, h, messages, warm)) for u, h in targets]
    await warm.wait()
    started, client_cpu = time.perf_counter(), time.process_time()
    server_cpu, own_cpu = cpu_seconds(server), cpu_seconds(server, children=False)
    results = await asyncio.gather(*loops)
    elapsed = time.perf_counter() - started
    rtts = [r for per in results for r in per]
    cpu_us = {
        "client": round((time.process_time() - client_cpu) * 1e6 / len(rtts), 1),
        "server": round((cpu_seconds(server) - server_cpu) * 1e6 / len(rtts), 1),
        # The gateway alone, without its engine (the whole server on the other paths).
        "server_process": round(
            (cpu_seconds(server, children=False) - own_cpu) * 1e6 / len(rtts), 1
        ),
    }
    return {
        "sessions": sessions,
        "messages": len(rtts),
        "seconds": round(elapsed, 3),
        "messages_per_second": round(len(rtts) / elapsed, 1),
        **latency_summary(rtts),
        "cpu_us_per_message": cpu_us,
        # Messages/s once every core is busy with this client and these servers: the most the
        # machine allows this path, whatever the scheduling.
        "cpu_ceiling_messages_per_second": round(
            available_cores() * 1e6 / (cpu_us["client"] + cpu_us["server"]), 1
        ),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the three paths at 1 and N concurrent sessions and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", default="100,1000", help="comma-separated loads")
    parser.add_argument("--messages-total", type=int, default=4000)
    parser.add_argument("--messages-single", type=int, default=300)
    parser.add_argument("--serve-reference", type=int, metavar="PORT")
    args = parser.parse_args(argv)
    if args.serve_reference:
        uvicorn.run(
            reference_app(),
            host="127.0.0.1",
            port=args.serve_reference,
            log_level="warning",
            ws="websockets-sansio",
        )
        return
    loads = [1, *(int(n) for n in args.sessions.split(","))]
    key = secrets.token_urlsafe(16)
    gw_port, engine_port, ref_port = free_port(), free_port(), free_port()
    capacity = str(sum(loads) + 10)
    gateway_env = {
        "MANAGEMENT_API_HOST": "127.0.0.1",
        "MANAGEMENT_API_PORT": str(gw_port),
        "MAX_SESSIONS": capacity,
        # One student opens every session, as fast as it can: the abuse limits stay out of it.
        "MAX_SESSIONS_PER_STUDENT": capacity,
        "MAX_MESSAGES_PER_SECOND": "1000000",
        "MAX_MESSAGES_BURST": "1000000",
        "MAX_REQUESTS_PER_MINUTE": "1000000",
        "SESSION_TIMEOUT_SECONDS": "3600",
        # Its engine keeps history in memory, as the direct engine does: the relay is measured,
        # not SQLite's commits (``make run``'s engines write history.db).
        "ENGINE_HISTORY_URL": "memory://",
        "ENGINE_API_KEY": key,
        "LOG_LEVEL": "warning",
        "ENGINE_LOG_LEVEL": "warning",
    }
    engine_env = {"ENGINE_API_KEY": key, "ENGINE_LOG_LEVEL": "warning", "ENGINE_TUTOR_ID": "1"}
    gateway = f"http://127.0.0.1:{gw_port}"

    async def through_gateway() -> tuple[str, dict[str, str]]:
        async with httpx.AsyncClient() as http:
            body = (
                await http.post(f"{gateway}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
            ).json()
        return f"{body['engine_url']}?token={body['engine_token']}", {}

    async def direct() -> tuple[str, dict[str, str]]:
        return f"ws://127.0.0.1:{engine_port}/ws/{uuid.uuid4()}", {ENGINE_KEY_HEADER: key}

    async def reference() -> tuple[str, dict[str, str]]:
        return f"ws://127.0.0.1:{ref_port}/ws/{uuid.uuid4()}", {}

    results: dict[str, dict[str, dict[str, Any]]] = {}
    with (
        # The gateway's sessions stay out of ``make run``'s state directory.
        tempfile.TemporaryDirectory(prefix="bench-relay-") as state_dir,
        process(
            [sys.executable, "-m", "tutor_gateway"],
            {
                **gateway_env,
                "WEBSOCKET_URL": f"ws://127.0.0.1:{gw_port}/ws",
                "STATE_DIR": state_dir,
            },
            f"{gateway}/health",
        ) as gateway_server,
        process(
            [
                sys.executable,
                "-m",
                "tutor_engine",
                "--host",
                "127.0.0.1",
                "--port",
                str(engine_port),
            ],
            engine_env,
            f"http://127.0.0.1:{engine_port}/readyz",
        ) as engine_server,
        process(
            [sys.executable, "-m", "bench.relay", "--serve-reference", str(ref_port)],
            {},
            f"http://127.0.0.1:{ref_port}/health",
        ) as reference_server,
    ):
        paths = (
            ("reference", reference, reference_server),
            ("direct", direct, engine_server),
            ("gateway", through_gateway, gateway_server),
        )
        for name, opener, server in paths:
            results[name] = {}
            for n in loads:
                each = args.messages_single if n == 1 else max(MIN_EACH, args.messages_total // n)
                results[name][f"{n}_sessions"] = asyncio.run(run_load(opener, n, each, server))

    def ratio(path: str, over: str, load: str, figure: str) -> float:
        return round(results[path][load][figure] / results[over][load][figure], 3)

    ratios = {
        load: {
            "throughput_gateway_over_reference": ratio(
                "gateway", "reference", load, "messages_per_second"
            ),
            "p50_gateway_over_reference": ratio("gateway", "reference", load, "p50_ms"),
            "throughput_gateway_over_direct": ratio(
                "gateway", "direct", load, "messages_per_second"
            ),
            "p50_gateway_over_direct": ratio("gateway", "direct", load, "p50_ms"),
            "cpu_ceiling_gateway_over_reference": ratio(
                "gateway", "reference", load, "cpu_ceiling_messages_per_second"
            ),
        }
        for load in results["direct"]
    }
    goal: dict[str, Any] = {
        "throughput_gateway_over_reference_at_least": GOAL_THROUGHPUT_OVER_REFERENCE,
        "at": [f"{n}_sessions" for n in loads if n >= 100],
    }
    goal["met"] = all(
        ratios[load]["throughput_gateway_over_reference"] >= GOAL_THROUGHPUT_OVER_REFERENCE
        for load in goal["at"]
    )
    result = {"engine": "mock", "paths": results, "ratios": ratios, "goal": goal}
    path = write_result("relay", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
