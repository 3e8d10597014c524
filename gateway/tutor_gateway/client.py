"""A tiny client of the seed's API: create a session, talk over the WebSocket, end the session.

python -m tutor_gateway.client --text "你好"
python -m tutor_gateway.client --audio question.wav --save-audio reply.wav
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

# Messages that end one turn for a seed client: a text reply to text, audio to audio, or an error.
FINAL = {"text": {"text", "error"}, "audio": {"audio", "error"}}


def summarize(message: dict[str, Any]) -> dict[str, Any]:
    """The message with base64 audio replaced by its size, for printing."""
    if isinstance(message.get("data"), str):
        return {**message, "data": f"<{len(base64.b64decode(message['data']))} bytes of audio>"}
    return message


def converse(args: argparse.Namespace) -> int:
    """Run one session with the given messages; return a process exit code."""
    base = args.base_url.rstrip("/")
    key = args.api_key or os.environ.get("MANAGEMENT_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=30, headers=headers) as http:
        created = http.post(
            f"{base}/v1/sessions",
            json={"tutor_id": args.tutor_id, "student_id": args.student_id, "kb_id": args.kb_id},
        )
        if created.status_code != 201:
            print(f"create failed: {created.status_code} {created.text}", file=sys.stderr)
            return 1
        session = created.json()
        print(json.dumps({k: v for k, v in session.items() if k != "engine_token"}))
        turns: list[tuple[str, dict[str, Any]]] = [
            ("text", {"type": "text", "content": text}) for text in args.text
        ]
        turns += [
            ("audio", {"type": "audio", "data": base64.b64encode(p.read_bytes()).decode()})
            for p in args.audio
        ]
        ok = True
        try:
            url = f"{session['engine_url']}?token={session['engine_token']}"
            with connect(url, max_size=None, open_timeout=args.timeout) as ws:
                for kind, message in turns:
                    ws.send(json.dumps(message, ensure_ascii=False))
                    while True:
                        reply = json.loads(ws.recv(timeout=args.timeout))
                        print(json.dumps(summarize(reply), ensure_ascii=False))
                        if reply["type"] == "audio" and args.save_audio:
                            args.save_audio.write_bytes(base64.b64decode(reply["data"]))
                        if reply["type"] in FINAL[kind]:
                            ok = ok and reply["type"] != "error"
                            break
        finally:
            if not args.keep:
                http.delete(f"{base}/v1/sessions/{session['session_id']}")
    return 0 if ok else 2


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m tutor_gateway.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base-url", default="http://localhost:9000", help="gateway address")
    parser.add_argument(
        "--api-key",
        default=None,
        help="management API key sent as Authorization: Bearer (default: $MANAGEMENT_API_KEY)",
    )
    parser.add_argument("--tutor-id", type=int, default=1)
    parser.add_argument("--student-id", type=int, default=1)
    parser.add_argument("--kb-id", default=None)
    parser.add_argument("--text", action="append", default=[], help="a message (repeatable)")
    parser.add_argument(
        "--audio", action="append", default=[], type=Path, help="an audio file to send (repeatable)"
    )
    parser.add_argument("--save-audio", type=Path, help="write the last audio reply here")
    parser.add_argument("--keep", action="store_true", help="do not delete the session")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait per reply")
    args = parser.parse_args(argv)
    if not args.text and not args.audio:
        parser.error("give at least one --text or --audio")
    try:
        return converse(args)
    except (httpx.TransportError, OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
        print(f"error: {unreachable(exc, args.base_url)}", file=sys.stderr)
        return EXIT_UNREACHABLE


EXIT_UNREACHABLE = 3  # the gateway (or its WebSocket) could not be reached or went away


def unreachable(exc: BaseException, base_url: str) -> str:
    """One line saying what could not be reached, and why (never a traceback)."""
    reason = " ".join((str(exc) or type(exc).__name__).split())
    if isinstance(exc, httpx.TransportError):
        what = f"cannot reach the gateway at {base_url} ({reason})"
        return f"{what}: is it running? (make run, or --base-url)"
    if isinstance(exc, ConnectionClosed):
        return f"the gateway closed the conversation ({reason})"
    if isinstance(exc, TimeoutError):
        return f"no answer in time from the gateway's WebSocket ({reason}); see --timeout"
    return f"cannot open the conversation WebSocket ({reason})"


if __name__ == "__main__":
    sys.exit(main())
