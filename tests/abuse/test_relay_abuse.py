"""Attacks on the gateway's relay: inflating frames, many sockets, clients that never read.

A real gateway process with real (mock-backend) engine processes; bounds are asserted on the
gateway's resident memory, on the engine's pid and on a well-behaved student of the same tutor,
whose latency under attack is compared with its own unloaded latency in the same test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable

from tutor_engine.backends.mock import make_wav
from websockets.exceptions import ConnectionClosed

from .conftest import (
    RawClient,
    connect_session,
    create_session,
    median,
    recv_json,
    round_trips,
)

MiB = 2**20


class PeakRss:
    """Samples a process's resident memory in the background; ``peak`` is the largest seen."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read
        self.baseline = read()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.read())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.baseline


def padded_turn(size: int) -> str:
    """A valid text turn padded to ``size`` bytes with highly compressible filler."""
    head = '{"type": "text", "content": "hi", "pad": "'
    return head + "a" * (size - len(head) - 2) + '"}'


def test_inflating_frames_on_many_sockets_stay_within_the_bounds(gateway_process) -> None:
    gateway = gateway_process(
        MAX_MESSAGE_BYTES=MiB,
        MAX_QUEUED_BYTES=2 * MiB,
        WS_MAX_FRAME_BYTES=2 * MiB,
        ENGINE_MAX_MESSAGE_BYTES=2 * MiB,
    )
    good_session = create_session(gateway, tutor_id=1, student_id=99)
    attackers = [create_session(gateway, tutor_id=1, student_id=n) for n in range(2)]
    frame = padded_turn(MiB - 64)  # ~1 KiB on the wire once deflated
    with connect_session(gateway, good_session) as good:
        round_trips(good, 2)  # the engine is up and warm
        unloaded = median(round_trips(good, 5))
        (engine_pid,) = gateway.children()
        stack = contextlib.ExitStack()
        sockets = [
            stack.enter_context(connect_session(gateway, s, compression="deflate"))
            for s in attackers
            for _ in (0, 1)
        ]

        def flood(ws) -> None:
            try:
                for _ in range(60):
                    ws.send(frame)
            except ConnectionClosed:
                pass

        with PeakRss(gateway.rss_mb) as rss:
            threads = [threading.Thread(target=flood, args=(ws,), daemon=True) for ws in sockets]
            for thread in threads:
                thread.start()
            loaded = median(round_trips(good, 5))
            time.sleep(2.0)  # let the gateway inflate and queue whatever it would
        stack.close()
        assert round_trips(good, 1), "the well-behaved student is still served"
    print(f"gateway RSS growth {rss.growth:.1f} MB; good p50 {unloaded:.4f}s -> {loaded:.4f}s")
    # 4 sockets × 60 MiB would have been queued before (240 MB measured with the byte bound but
    # unbounded inflation per read); the bounds allow ~10 MiB per socket, plus allocator slack.
    assert rss.growth < 100, f"gateway grew {rss.growth:.0f} MB under 240 MiB of inflated frames"
    # Seconds (12-15 s) when one session could starve the tutor; tenths of a second now.
    assert loaded <= 20 * unloaded + 2.0, (unloaded, loaded)
    assert gateway.children() == [engine_pid]
    assert "Traceback" not in gateway.log()


def test_a_client_that_never_reads_is_cut_off_and_frees_its_queue(gateway_process) -> None:
    gateway = gateway_process(CLIENT_SEND_TIMEOUT_SECONDS=1)
    stuck_session = create_session(gateway, tutor_id=2)
    good_session = create_session(gateway, tutor_id=2, student_id=2)
    with connect_session(gateway, good_session) as good:
        round_trips(good, 1)
        (engine_pid,) = gateway.children()
        url = f"{gateway.ws}/ws/ws/{stuck_session['session_id']}?token="
        stuck = RawClient(url + stuck_session["engine_token"], receive_buffer=4096)
        question = make_wav("please repeat this long sentence " * 8)  # ~1 MB spoken replies
        audio = json.dumps({"type": "audio", "data": base64.b64encode(question).decode()})
        with PeakRss(gateway.rss_mb) as rss:
            for _ in range(30):
                stuck.send_text(audio)
            deadline = time.monotonic() + 60
            while "client took no data" not in gateway.log():
                assert time.monotonic() < deadline, gateway.log()[-2000:]
                time.sleep(0.1)
            assert round_trips(good, 1), "the other student of the tutor is still served"
        texts, code = stuck.read_to_close()
        stuck.close()
    print(f"stuck client closed {code} after {len(texts)} frames; gateway grew {rss.growth:.1f} MB")
    assert code == 4504, (code, len(texts))
    assert rss.growth < 80, f"gateway grew {rss.growth:.0f} MB"
    with connect_session(gateway, stuck_session) as again:
        assert round_trips(again, 1), "the session itself is still usable"
    assert gateway.children() == [engine_pid]


def test_only_the_newest_sockets_of_a_session_stay_open(gateway_process) -> None:
    gateway = gateway_process(MAX_CONNECTIONS_PER_SESSION=2)
    session = create_session(gateway)
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(connect_session(gateway, session)) for _ in range(5)]
        closed = []
        for ws in opened[:3]:
            message = recv_json(ws)
            assert message["type"] == "error" and "newer connection" in message["content"]
            try:
                ws.recv(timeout=30)
            except ConnectionClosed as exc:
                closed.append(exc.rcvd.code if exc.rcvd else None)
        assert closed == [4409, 4409, 4409]
        for ws in opened[3:]:
            assert round_trips(ws, 1)
