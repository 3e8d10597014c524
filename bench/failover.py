"""Failover benchmark: an engine killed (SIGKILL) → the next reply on the same client socket.

Local mode, mock engine, loopback only, bounded: one session and one socket; ``--kills``
times, the tutor's engine process is killed and a message sent at once, and the time from the
kill to its reply (the gateway notices, restarts the engine, resends the message) is measured.
Plain round trips on the same socket are measured too, for scale. Writes
bench/results/failover.json.

    python -m bench.failover
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time

import httpx
import psutil
from websockets.sync.client import ClientConnection, connect

from .common import free_port, latency_summary, process, write_result

REPLY_TIMEOUT = 60.0  # seconds for any one reply (the engine start budget is 120 s)


def the_engine(gateway: psutil.Process, not_pid: int | None = None) -> int:
    """The pid of the gateway's one engine process (other than ``not_pid``)."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    while time.monotonic() < deadline:
        pids = [p.pid for p in gateway.children() if p.status() != psutil.STATUS_ZOMBIE]
        if len(pids) == 1 and pids[0] != not_pid:
            return pids[0]
        time.sleep(0.05)
    raise TimeoutError("the gateway has no single engine process")


def ask(ws: ClientConnection, content: str) -> dict[str, object]:
    """Send a text message; its reply (which must be a text answering it)."""
    ws.send(json.dumps({"type": "text", "content": content}))
    reply = json.loads(ws.recv(timeout=REPLY_TIMEOUT))
    assert reply["type"] == "text" and content in str(reply["content"]), reply
    return reply


def main(argv: list[str] | None = None) -> None:
    """Kill the engine ``--kills`` times under one socket; write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--round-trips", type=int, default=20)
    args = parser.parse_args(argv)
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as state:
        env = {
            "MANAGEMENT_API_HOST": "127.0.0.1",
            "MANAGEMENT_API_PORT": str(port),
            "WEBSOCKET_URL": f"ws://127.0.0.1:{port}/ws",
            "STATE_DIR": state,
            # Round trips as fast as the engine answers: not the message-rate limit.
            "MAX_MESSAGES_PER_SECOND": "1000000",
            "MAX_MESSAGES_BURST": "1000000",
            "ENGINE_ASR_BACKEND": "mock",
            "ENGINE_TTS_BACKEND": "mock",
            "ENGINE_LLM_BACKEND": "mock",
            "LOG_LEVEL": "warning",
            "ENGINE_LOG_LEVEL": "warning",
        }
        with process(
            [sys.executable, "-m", "tutor_gateway"], env, f"{gateway_url}/health", stop_seconds=30
        ) as gateway:
            body = httpx.post(
                f"{gateway_url}/v1/sessions", json={"tutor_id": 1, "student_id": 1}, timeout=30
            ).json()
            url = f"{body['engine_url']}?token={body['engine_token']}"
            with connect(url, max_size=None, open_timeout=30) as ws:
                ask(ws, "warm up")
                plain = []
                for i in range(args.round_trips):
                    started = time.perf_counter()
                    ask(ws, f"question {i}")
                    plain.append(time.perf_counter() - started)
                failovers, pid = [], the_engine(gateway)
                for i in range(args.kills):
                    killed = time.perf_counter()
                    os.kill(pid, signal.SIGKILL)
                    ask(ws, f"after kill {i}")
                    failovers.append(time.perf_counter() - killed)
                    pid = the_engine(gateway, not_pid=pid)
            metrics = httpx.get(f"{gateway_url}/metrics", timeout=30).text
    resumed = re.search(r'tutor_gateway_failovers_total\{outcome="resumed"\} (\S+)', metrics)
    result = {
        "engine": "mock",
        "mode": "local",
        "kills": args.kills,
        "kill_to_next_reply": latency_summary(failovers),
        "plain_round_trip": latency_summary(plain),
        "failovers_resumed": float(resumed.group(1)) if resumed else 0.0,
    }
    path = write_result("failover", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
