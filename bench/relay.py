"""Relay benchmark: text round trips through the gateway versus straight to the engine.

Mock engine, loopback only, bounded: 1 session × ``--messages-single`` messages and
``--sessions`` sessions × ``--messages-each`` messages, per path. Writes bench/results/relay.json.

    python -m bench.relay
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

import httpx
from tutor_contract.crd import ENGINE_KEY_HEADER
from websockets.asyncio.client import connect

from .common import free_port, latency_summary, process, write_result

Opener = Callable[[], Awaitable[tuple[str, dict[str, str]]]]


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


async def run_load(open_session: Opener, sessions: int, messages: int) -> dict[str, float]:
    """``sessions`` warmed-up connections each doing ``messages`` sequential round trips."""
    targets = [await open_session() for _ in range(sessions)]
    warm = asyncio.Barrier(sessions + 1)
    loops = [asyncio.create_task(_session_loop(u, h, messages, warm)) for u, h in targets]
    await warm.wait()
    started = time.perf_counter()
    results = await asyncio.gather(*loops)
    elapsed = time.perf_counter() - started
    rtts = [r for per in results for r in per]
    return {
        "sessions": sessions,
        "messages": len(rtts),
        "seconds": round(elapsed, 3),
        "messages_per_second": round(len(rtts) / elapsed, 1),
        **latency_summary(rtts),
    }


def main(argv: list[str] | None = None) -> None:
    """Run both paths at 1 and N concurrent sessions and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--messages-each", type=int, default=20)
    parser.add_argument("--messages-single", type=int, default=300)
    args = parser.parse_args(argv)
    key = secrets.token_urlsafe(16)
    gw_port, engine_port = free_port(), free_port()
    gateway_env = {
        "MANAGEMENT_API_HOST": "127.0.0.1",
        "MANAGEMENT_API_PORT": str(gw_port),
        "MAX_SESSIONS": str(args.sessions + 10),
        # One student opens every session, as fast as it can: the abuse limits stay out of it.
        "MAX_SESSIONS_PER_STUDENT": str(args.sessions + 10),
        "MAX_MESSAGES_PER_SECOND": "1000000",
        "MAX_MESSAGES_BURST": "1000000",
        "MAX_REQUESTS_PER_MINUTE": "1000000",
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

    results: dict[str, dict[str, dict[str, float]]] = {}
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
        ),
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
        ),
    ):
        for name, opener in (("direct", direct), ("gateway", through_gateway)):
            results[name] = {
                "1_session": asyncio.run(run_load(opener, 1, args.messages_single)),
                f"{args.sessions}_sessions": asyncio.run(
                    run_load(opener, args.sessions, args.messages_each)
                ),
            }
    ratios = {
        load: {
            "throughput_gateway_over_direct": round(
                results["gateway"][load]["messages_per_second"]
                / results["direct"][load]["messages_per_second"],
                3,
            ),
            "p50_gateway_over_direct": round(
                results["gateway"][load]["p50_ms"] / results["direct"][load]["p50_ms"], 3
            ),
        }
        for load in results["direct"]
    }
    path = write_result("relay", {"engine": "mock", "paths": results, "ratios": ratios})
    print(path.read_text())


if __name__ == "__main__":
    main()
