"""History store cost per turn: the same engine with its history in memory, SQLite and Redis.

Three engine processes (mock backends) run side by side on 127.0.0.1, one per store, with a
real redis-server for the third. Each round sends one text turn to each engine in turn, on one
WebSocket per engine, so machine noise falls on all three alike; the result is each store's
turn round trip and its ratio to the in-memory one, from the same run. Every turn loads the
session's history and saves the exchange (trimmed to ``ENGINE_MAX_HISTORY_MESSAGES``), which
is exactly what the store adds to a turn. Writes bench/results/history_store.json.

    python -m tests.bench.history_store
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from websockets.sync.client import ClientConnection, connect

from bench.common import free_port, latency_summary, process, write_result
from tests.support.redis_server import RedisServer

STORES = ("memory", "sqlite", "redis")


def turn(ws: ClientConnection, text: str) -> float:
    """One text message and its reply; the round trip in seconds."""
    started = time.perf_counter()
    ws.send(json.dumps({"type": "text", "content": text}))
    while json.loads(ws.recv(timeout=60)).get("type") != "text":
        pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    """Run the three engines, interleave their turns, and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=200, help="turns per store")
    parser.add_argument("--warmup", type=int, default=10, help="turns per store not measured")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-history-")))
        redis = stack.enter_context(RedisServer(password="bench"))
        urls = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{state / 'history.db'}",
            "redis": redis.url,
        }
        sockets: dict[str, ClientConnection] = {}
        for store in STORES:
            port = free_port()
            env = {
                "ENGINE_ASR_BACKEND": "mock",
                "ENGINE_TTS_BACKEND": "mock",
                "ENGINE_LLM_BACKEND": "mock",
                "ENGINE_API_KEY": "",
                "ENGINE_LOG_LEVEL": "warning",
                "ENGINE_HISTORY_URL": urls[store],
                "ENGINE_HISTORY_PASSWORD": redis.password or "",
            }
            command = [sys.executable, "-m", "tutor_engine", "--host", "127.0.0.1"]
            stack.enter_context(
                process([*command, "--port", str(port)], env, f"http://127.0.0.1:{port}/readyz")
            )
            url = f"ws://127.0.0.1:{port}/ws/{uuid.uuid4()}"
            sockets[store] = stack.enter_context(connect(url, max_size=None))
        seconds: dict[str, list[float]] = {store: [] for store in STORES}
        for number in range(args.warmup + args.turns):
            for store in STORES:
                elapsed = turn(sockets[store], f"question {number}")
                if number >= args.warmup:
                    seconds[store].append(elapsed)
    summaries = {store: latency_summary(seconds[store]) for store in STORES}
    base = summaries["memory"]
    ratios = {
        f"{store}_over_memory": {
            "p50": round(summaries[store]["p50_ms"] / base["p50_ms"], 3),
            "mean": round(summaries[store]["mean_ms"] / base["mean_ms"], 3),
        }
        for store in STORES
        if store != "memory"
    }
    path = write_result(
        "history_store",
        {"engine": "mock", "turns_per_store": args.turns, "turn": summaries, "ratios": ratios},
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
