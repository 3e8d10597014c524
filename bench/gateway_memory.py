"""Gateway memory per open connection: RSS with N idle relayed WebSockets minus RSS without.

One gateway process (local mode, mock engine started by the gateway itself; only the gateway's
RSS counts, measured with psutil). Steps, in one run:

1. warm-up: ``--warm`` connections each do one round trip and close (imports, engine start,
   allocator pools);
2. 2 × N sessions are created over REST (``rss_sessions_created``: the session store's share,
   not counted per connection);
3. the first N WebSockets connect at once, each does one round trip (its engine connection is
   open), then all sit idle for ``--settle`` seconds: ``rss_engine_connected``;
4. they stay idle until the gateway has given their engine connections up
   (``ENGINE_IDLE_RELEASE_SECONDS``, the default unless ``--release`` says otherwise), plus
   ``--settle``: ``rss_idle``;
5. N more do the same (steps 3 and 4): ``rss_idle_2n``.

Figures, per connection:

- ``kib_per_connection`` = (``rss_idle_2n`` - ``rss_idle``) / N: what an idle student's
  connection costs a gateway in service (the memory the first N's engine connections freed is
  reused, as it is for any later student); goal ≤ 40 KiB (issue 14);
- ``kib_per_connection_engine_connected`` = (``rss_engine_connected`` - ``rss_sessions_created``)
  / N: N students active at once on a fresh gateway, engine connections open;
- ``kib_per_connection_first_idle`` = (``rss_idle`` - ``rss_sessions_created``) / N: the same N
  once idle. RSS does not shrink when they give their engine connections up: Python keeps the
  memory for reuse, so this stays near the figure before.

Writes bench/results/gateway_memory.json.

    python -m bench.gateway_memory
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import sys
import tempfile

import httpx
import psutil
from tutor_gateway.config import GatewaySettings
from websockets.asyncio.client import ClientConnection, connect

from .common import free_port, process, write_result

GOAL_KIB_PER_CONNECTION = 40


async def _sessions(base: str, count: int) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as http:
        urls = []
        for _ in range(count):
            response = await http.post(f"{base}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
            body = response.json()
            urls.append(f"{body['engine_url']}?token={body['engine_token']}")
        return urls


async def _open(url: str) -> ClientConnection:
    ws = await connect(url, max_size=None, open_timeout=60)
    await ws.send(json.dumps({"type": "text", "content": "hello"}))
    reply = json.loads(await ws.recv())
    assert reply["type"] == "text", reply
    return ws


async def _open_all(urls: list[str], parallel: int = 50) -> list[ClientConnection]:
    gate = asyncio.Semaphore(parallel)

    async def one(url: str) -> ClientConnection:
        async with gate:
            return await _open(url)

    return list(await asyncio.gather(*(one(u) for u in urls)))


def _rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


async def _batch(
    urls: list[str], proc: psutil.Process, settle: float, release: float
) -> tuple[list[ClientConnection], int, int]:
    """Open the connections; RSS with their engine connections open, then once given up."""
    sockets = await _open_all(urls)
    await asyncio.sleep(settle)
    engine_connected = _rss(proc)
    await asyncio.sleep(release + settle)
    return sockets, engine_connected, _rss(proc)


async def measure(
    base: str, proc: psutil.Process, n: int, warm: int, settle: float, release: float
) -> dict:
    """The RSS figures of one run (see the module's docstring)."""
    for ws in await _open_all(await _sessions(base, warm)):
        await ws.close()
    await asyncio.sleep(settle)
    rss_warm = _rss(proc)
    urls = await _sessions(base, 2 * n)
    await asyncio.sleep(settle)
    rss_created = _rss(proc)
    first, rss_engine_connected, rss_idle = await _batch(urls[:n], proc, settle, release)
    second, rss_engine_connected_2n, rss_idle_2n = await _batch(urls[n:], proc, settle, release)
    await asyncio.gather(*(ws.close() for ws in first + second))
    await asyncio.sleep(settle)
    rss_closed = _rss(proc)
    per = (rss_idle_2n - rss_idle) / n / 1024
    mib = 1024 * 1024
    return {
        "connections": n,
        "warm_up_connections": warm,
        "engine_idle_release_seconds": release,
        "rss_mib": {
            "warm_no_sessions": round(rss_warm / mib, 1),
            "sessions_created": round(rss_created / mib, 1),
            "engine_connected": round(rss_engine_connected / mib, 1),
            "idle": round(rss_idle / mib, 1),
            "engine_connected_2n": round(rss_engine_connected_2n / mib, 1),
            "idle_2n": round(rss_idle_2n / mib, 1),
            "after_close": round(rss_closed / mib, 1),
        },
        "session_creation_kib_each": round((rss_created - rss_warm) / (2 * n) / 1024, 1),
        "kib_per_connection": round(per, 1),
        "kib_per_connection_engine_connected": round(
            (rss_engine_connected - rss_created) / n / 1024, 1
        ),
        "kib_per_connection_first_idle": round((rss_idle - rss_created) / n / 1024, 1),
        "goal_kib_per_connection": GOAL_KIB_PER_CONNECTION,
        "goal_met": per <= GOAL_KIB_PER_CONNECTION,
    }


def main(argv: list[str] | None = None) -> None:
    """Measure and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument(
        "--release",
        type=float,
        default=GatewaySettings.model_fields["engine_idle_release_seconds"].default,
        help="ENGINE_IDLE_RELEASE_SECONDS for the gateway (default: the gateway's default)",
    )
    args = parser.parse_args(argv)
    port = free_port()
    total = 2 * args.connections + args.warm + 10
    env = {
        "MANAGEMENT_API_HOST": "127.0.0.1",
        "MANAGEMENT_API_PORT": str(port),
        "WEBSOCKET_URL": f"ws://127.0.0.1:{port}/ws",
        "MAX_SESSIONS": str(total),
        "MAX_SESSIONS_PER_STUDENT": str(total),
        "MAX_MESSAGES_PER_SECOND": "1000000",
        "MAX_MESSAGES_BURST": "1000000",
        "MAX_REQUESTS_PER_MINUTE": "1000000",
        "ENGINE_API_KEY": secrets.token_urlsafe(16),
        "SESSION_TIMEOUT_SECONDS": "3600",
        "ENGINE_IDLE_RELEASE_SECONDS": str(args.release),
        "LOG_LEVEL": "warning",
        "ENGINE_LOG_LEVEL": "warning",
    }
    base = f"http://127.0.0.1:{port}"
    with (
        tempfile.TemporaryDirectory(prefix="bench-gwmem-") as state_dir,
        process(
            [sys.executable, "-m", "tutor_gateway"],
            {**env, "STATE_DIR": state_dir},
            f"{base}/health",
        ) as proc,
    ):
        gc.collect()
        result = asyncio.run(
            measure(base, proc, args.connections, args.warm, args.settle, args.release)
        )
    path = write_result("gateway_memory", {"engine": "mock", **result})
    print(path.read_text())


if __name__ == "__main__":
    main()
