"""The API documents: offline /docs and /redoc, the OpenAPI, and the WebSocket's AsyncAPI.

Against real gateways (``gateway_factory``: uvicorn on 127.0.0.1, mock engine processes): the
pages load only the gateway's own assets; each REST operation is documented once, with an
example for every response that a real gateway's answer matches; ``/asyncapi.yaml`` is a valid
AsyncAPI 3.0 document (the official JSON schema, vendored in ``tests/support/asyncapi``) and
every message the gateway and engines really send in a scripted conversation (text, audio,
streaming, a barge-in, errors, cold-start ``status`` events, streamed audio input with a
commit and with the server's VAD, the token subprotocol) validates
against its payload schema, each server message of the document seen at least once.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
import subprocess
import sys
import time
import wave
import zipfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from tutor_contract.version import distribution_version
from tutor_engine.backends.mock import make_wav
from tutor_engine.protocol import (
    AUDIO_FORMATS,
    OUTPUT_FORMATS,
    OUTPUT_RATES,
    ProtocolError,
    parse_client_frame,
)
from tutor_gateway import auth, frames
from tutor_gateway.api import responses
from tutor_gateway.startup import STATES, STATUS_INTERVAL_SECONDS
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import GatewayFactory
from tests.servers import RunningServer

from .helpers import create_session

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the chart extra (make test)")

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI_FILE = ROOT / "gateway" / "tutor_gateway" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = ROOT / "tests" / "support" / "asyncapi" / "asyncapi-3.0.0.schema.json"
KEY = "docs-test-key-Jq3vX8mN2pL5rT9wY4zB6cD1"
CLIENT_MESSAGES = {
    "clientText",
    "clientAudio",
    "clientOptions",
    "clientAudioStart",
    "clientAudioFrame",
    "clientAudioAppend",
    "clientAudioCommit",
    "clientAudioCancel",
}


# --- helpers -----------------------------------------------------------------------------------


def asyncapi() -> dict[str, Any]:
    return yaml.safe_load(ASYNCAPI_FILE.read_text(encoding="utf-8"))


def strict(schema: Any) -> Any:
    """``schema`` with every object schema closed (``additionalProperties: false``): the document
    lets fields grow, the test catches a field the servers send that it does not describe."""
    if isinstance(schema, dict):
        closed = {k: strict(v) for k, v in schema.items()}
        if "properties" in closed and "additionalProperties" not in closed:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def payload_validator(doc: dict[str, Any], message_id: str) -> jsonschema.Draft7Validator:
    """A (strict) validator of one component message's payload, its refs resolved in ``doc``."""
    ref = doc["components"]["messages"][message_id]["payload"]["$ref"]
    root = {"$ref": ref, "components": strict(doc["components"])}
    return jsonschema.Draft7Validator(root)


def server_message_ids(doc: dict[str, Any]) -> set[str]:
    return set(doc["components"]["messages"]) - CLIENT_MESSAGES


class Matcher:
    """Finds which of the document's server messages a received message is."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.validators = {m: payload_validator(doc, m) for m in server_message_ids(doc)}
        self.seen: Counter[str] = Counter()

    def check(self, message: dict[str, Any]) -> str:
        matches = sorted(m for m, v in self.validators.items() if v.is_valid(message))
        if not matches:
            problems = {
                m: [e.message for e in v.iter_errors(message)][:3]
                for m, v in self.validators.items()
            }
            pytest.fail(f"no message of the document fits {summary(message)}: {problems}")
        assert len(matches) == 1, f"{summary(message)} fits several messages: {matches}"
        self.seen[matches[0]] += 1
        return matches[0]


def summary(message: dict[str, Any]) -> dict[str, Any]:
    if isinstance(message.get("data"), str):
        return {**message, "data": f"<{len(message['data'])} chars>"}
    return message


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


class Assets(HTMLParser):
    """The ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def openapi_validator(openapi: dict[str, Any], schema: dict[str, Any]) -> Any:
    root = {**schema, "components": openapi["components"]}
    return jsonschema.Draft202012Validator(root)


def leaves(value: Any) -> list[Any]:
    """Every scalar in a JSON value."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def numbers_as_n(text: str) -> str:
    return re.sub(r"\d+", "N", text)


# --- the pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_pages_load_only_the_gateways_own_files(gateway: RunningServer, page: str) -> None:
    response = httpx.get(f"{gateway.http}{page}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "cdn." not in response.text and "fonts.googleapis" not in response.text
    parser = Assets()
    parser.feed(response.text)
    assert parser.urls, "the page names its script"
    for url in parser.urls:
        assert url.startswith("/docs/assets/"), url
        asset = httpx.get(f"{gateway.http}{url}")
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    scripts = [u for u in parser.urls if u.endswith(".js")]
    assert scripts == [
        "/docs/assets/swagger-ui-bundle.js"
        if page == "/docs"
        else "/docs/assets/redoc.standalone.js"
    ]
    assert "/openapi.json" in response.text
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src 'self' data:" in csp
    assert "connect-src 'self'" in csp and "http" not in csp


def test_the_assets_have_their_types_and_revalidate(gateway: RunningServer) -> None:
    types = {
        "swagger-ui-bundle.js": "text/javascript",
        "redoc.standalone.js": "text/javascript",
        "swagger-ui.css": "text/css",
        "favicon.png": "image/png",
    }
    for name, media_type in types.items():
        response = httpx.get(f"{gateway.http}/docs/assets/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == media_type
        etag = response.headers["etag"]
        again = httpx.get(f"{gateway.http}/docs/assets/{name}", headers={"If-None-Match": etag})
        assert again.status_code == 304
    assert httpx.get(f"{gateway.http}/docs/assets/../app.py").status_code == 404
    assert httpx.get(f"{gateway.http}/docs/assets/nothing.js").status_code == 404


def test_swagger_ui_calls_no_validator(gateway: RunningServer) -> None:
    assert '"validatorUrl": null' in httpx.get(f"{gateway.http}/docs").text


# --- the OpenAPI -------------------------------------------------------------------------------


def test_each_operation_is_documented_once_and_the_alias_still_works(
    gateway: RunningServer,
) -> None:
    openapi = httpx.get(f"{gateway.http}/openapi.json").json()
    operations = {
        (method.upper(), path): op
        for path, methods in openapi["paths"].items()
        for method, op in methods.items()
    }
    assert set(operations) == {
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions/{session_id}"),
        ("DELETE", "/v1/sessions/{session_id}"),
        ("GET", "/health"),
    }
    assert {op["operationId"] for op in operations.values()} == {
        "list_sessions",
        "create_session",
        "get_session",
        "delete_session",
        "health",
    }
    assert all(op["tags"] for op in operations.values())
    assert {tag["name"] for tag in openapi["tags"]} >= {"sessions", "health", "conversation"}
    info = openapi["info"]
    assert info["version"] == distribution_version()
    assert "/mgmt/v1" in info["description"] and "alias" in info["description"]
    assert "(/asyncapi.yaml)" in info["description"]
    assert openapi["externalDocs"]["url"] == "/asyncapi.yaml"
    # The hidden alias serves the same operations.
    created = httpx.post(f"{gateway.http}/mgmt/v1/sessions", json={"tutor_id": 1, "student_id": 2})
    assert created.status_code == 201
    sid = created.json()["session_id"]
    assert httpx.get(f"{gateway.http}/mgmt/v1/sessions/{sid}").json()["session_id"] == sid
    assert httpx.get(f"{gateway.http}/v1/sessions/{sid}").status_code == 200
    assert httpx.delete(f"{gateway.http}/mgmt/v1/sessions/{sid}").status_code == 204


def test_every_response_has_a_real_example_that_fits_its_schema(gateway: RunningServer) -> None:
    openapi = httpx.get(f"{gateway.http}/openapi.json").json()
    checked = Counter()
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            has_input = "requestBody" in op or bool(op.get("parameters"))
            assert ("422" in op["responses"]) == has_input, f"{method} {path}"
            for status, response in op["responses"].items():
                where = f"{method.upper()} {path} {status}"
                assert response["description"] and response["description"] != "Successful Response"
                if status == "204":
                    assert "content" not in response, where
                    continue
                media = response["content"]["application/json"]
                examples = (
                    [media["example"]]
                    if "example" in media
                    else [e["value"] for e in media["examples"].values()]
                )
                assert examples, where
                validator = openapi_validator(openapi, media["schema"])
                for example in examples:
                    errors = [e.message for e in validator.iter_errors(example)]
                    assert not errors, f"{where}: {example} {errors}"
                    assert "string" not in leaves(example), f"{where}: a placeholder example"
                checked[status] += 1
    for status in ("200", "201", "401", "404", "413", "422", "429", "503"):
        assert checked[status], f"no {status} documented"


def test_a_response_a_route_adds_without_an_example_gets_one() -> None:
    openapi = {
        "paths": {"/v1/x": {"get": {"responses": {"429": {"description": "another limit"}}}}}
    }
    responses.fill_examples(openapi)
    filled = openapi["paths"]["/v1/x"]["get"]["responses"]["429"]
    assert filled["description"] == "another limit"
    assert filled["content"]["application/json"]["examples"]
    assert "Retry-After" in filled["headers"]


def example_details(openapi: dict[str, Any], path: str, method: str, status: int) -> list[Any]:
    media = openapi["paths"][path][method]["responses"][str(status)]["content"]["application/json"]
    return [e["value"]["detail"] for e in media["examples"].values()]


def test_the_error_examples_are_what_a_gateway_answers(gateway_factory: GatewayFactory) -> None:
    server = gateway_factory(max_sessions=10, max_sessions_per_student=3)
    base = server.http
    openapi = httpx.get(f"{base}/openapi.json").json()
    one, many = "/v1/sessions/{session_id}", "/v1/sessions"

    missing = httpx.get(f"{base}/v1/sessions/nope")
    assert missing.status_code == 404
    assert [missing.json()["detail"]] == example_details(openapi, one, "get", 404)

    no_tutor = httpx.post(f"{base}/v1/sessions", json={"student_id": 1})
    bad_kb = httpx.post(
        f"{base}/v1/sessions", json={"tutor_id": 1, "student_id": 1, "kb_id": "../etc"}
    )
    long_id = httpx.get(f"{base}/v1/sessions/{'x' * 65}")
    documented = {
        json.dumps(problem, sort_keys=True)
        for path, method in ((many, "post"), (one, "get"))
        for problems in example_details(openapi, path, method, 422)
        for problem in problems
    }
    for answer in (no_tutor, bad_kb, long_id):
        assert answer.status_code == 422
        (problem,) = answer.json()["detail"]
        assert json.dumps({k: problem[k] for k in problem if k != "url"}, sort_keys=True) in (
            documented
        ), problem

    too_large = httpx.post(
        f"{base}/v1/sessions",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert too_large.status_code == 413
    assert [too_large.json()["detail"]] == example_details(openapi, many, "post", 413)

    for _ in range(3):
        create_session(server, tutor_id=1, student_id=1)
    per_student = httpx.post(f"{base}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
    assert per_student.status_code == 429 and per_student.headers["retry-after"]
    assert per_student.json()["detail"] in example_details(openapi, many, "post", 429)

    for student in range(2, 9):
        create_session(server, tutor_id=1, student_id=student)
    full = httpx.post(f"{base}/v1/sessions", json={"tutor_id": 1, "student_id": 99})
    assert full.status_code == 503 and full.headers["retry-after"]
    assert full.json()["detail"] in example_details(openapi, many, "post", 503)


def test_the_key_and_rate_examples_are_what_a_gateway_answers(
    gateway_factory: GatewayFactory,
) -> None:
    server = gateway_factory(management_api_keys=KEY, max_requests_per_minute=5)
    openapi = httpx.get(f"{server.http}/openapi.json").json()
    documented = example_details(openapi, "/v1/sessions", "get", 401)
    missing = httpx.get(f"{server.http}/v1/sessions")
    wrong = httpx.get(f"{server.http}/v1/sessions", headers={"Authorization": "Bearer nope"})
    assert [missing.status_code, wrong.status_code] == [401, 401]
    assert [missing.json()["detail"], wrong.json()["detail"]] == documented
    headers = {"Authorization": f"Bearer {KEY}"}
    answers = [httpx.get(f"{server.http}/v1/sessions", headers=headers) for _ in range(8)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    (example,) = example_details(openapi, "/v1/sessions", "get", 429)
    assert numbers_as_n(limited[0].json()["detail"]) == numbers_as_n(example)
    assert limited[0].headers["retry-after"]


# --- the AsyncAPI document ---------------------------------------------------------------------


def test_asyncapi_is_served_as_yaml(gateway: RunningServer) -> None:
    response = httpx.get(f"{gateway.http}/asyncapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/yaml"
    assert response.content == ASYNCAPI_FILE.read_bytes()
    again = httpx.get(
        f"{gateway.http}/asyncapi.yaml", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    assert "/asyncapi.yaml" not in httpx.get(f"{gateway.http}/openapi.json").json()["paths"]


def test_asyncapi_is_valid_against_the_asyncapi_3_schema() -> None:
    doc = asyncapi()
    validator = jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    # The vendored schema does reject what is not AsyncAPI 3.
    broken = copy.deepcopy(doc)
    broken["operations"]["receiveText"]["action"] = "publish"  # AsyncAPI 2's word
    broken["channels"]["conversation"]["bindings"] = {"ws": {"method": "PUT"}}
    assert len(list(validator.iter_errors(broken))) >= 2


def test_asyncapi_structure() -> None:
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == distribution_version()
    for ref in refs(doc):
        resolve(doc, ref)  # every reference resolves
    channels = doc["channels"]
    assert {c["address"] for c in channels.values()} == {"/ws/ws/{session_id}", "/ws/{session_id}"}
    for channel in channels.values():
        assert set(channel["messages"]) == set(doc["components"]["messages"])
        binding = resolve(doc, channel["bindings"]["$ref"])["ws"]
        assert {"token", "stream", "events"} <= set(binding["query"]["properties"])
        assert "Sec-WebSocket-Protocol" in binding["headers"]["properties"]
    for name, operation in doc["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"] + operation.get("reply", {}).get("messages", []):
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
        sends_client = any(
            m["$ref"].split("/")[-1] in CLIENT_MESSAGES for m in operation["messages"]
        )
        assert sends_client == (operation["action"] == "receive"), name
    schemas = doc["components"]["schemas"]
    assert schemas["Status"]["properties"]["state"]["enum"] == list(STATES)
    assert schemas["ClientAudio"]["properties"]["format"]["enum"] == list(AUDIO_FORMATS)
    options = schemas["ClientOptions"]["properties"]
    assert set(options) == {"type", "stream", "events", "audio_format", "sample_rate"}
    assert options["audio_format"]["enum"] == list(OUTPUT_FORMATS)
    assert options["sample_rate"]["enum"] == list(OUTPUT_RATES)
    # Every message's examples fit its payload.
    for message_id, message in doc["components"]["messages"].items():
        validator = payload_validator(doc, message_id)
        assert message["examples"], message_id
        for example in message["examples"]:
            errors = [e.message for e in validator.iter_errors(example["payload"])]
            assert not errors, (message_id, example["name"], errors)


def test_asyncapi_names_every_close_code_and_the_token_options() -> None:
    doc = asyncapi()
    description = doc["info"]["description"]
    table = {int(code) for code in re.findall(r"^\| (\d{4}) \|", description, flags=re.M)}
    codes = {v for k, v in vars(frames).items() if k.startswith("CLOSE_")}
    assert codes <= table, codes - table
    assert {1009, 1012} <= table
    assert f"{auth.SUBPROTOCOL}, {auth.TOKEN_PROTOCOL_PREFIX}<engine_token>" in description
    schemes = doc["components"]["securitySchemes"]
    assert schemes["tokenQuery"]["name"] == "token" and schemes["tokenQuery"]["in"] == "query"
    assert schemes["tokenSubprotocol"]["name"] == "Sec-WebSocket-Protocol"
    for opt_in in ("?stream=1", "?events=1", '"stream": true', '"events": true'):
        assert opt_in in description, opt_in
    assert f"at least every {STATUS_INTERVAL_SECONDS:g} s" in description


VALID_CLIENT = [
    {"type": "text", "content": "你好"},
    {"type": "audio", "data": base64.b64encode(make_wav("hi")).decode()},
    {"type": "audio", "data": "AAABAA==", "format": "pcm16"},
    {"type": "options", "stream": True},
    {"type": "options", "events": True},
    {"type": "options"},
    {"type": "audio_start"},
    {"type": "audio_start", "format": "pcm16", "sample_rate": 16000, "vad": False},
    {"type": "audio_start", "silence_ms": 300, "barge_in": False},
    {"type": "audio_append", "data": "AAABAA=="},
    {"type": "audio_commit"},
    {"type": "audio_cancel"},
]
INVALID_CLIENT = [
    {"type": "text", "content": ""},
    {"type": "text", "content": "   "},
    {"type": "text"},
    {"type": "text", "content": 3},
    {"type": "audio"},
    {"type": "audio", "data": ""},
    {"type": "audio", "data": "not base64!"},
    {"type": "audio", "data": "AAAA", "format": "avi"},
    {"type": "options", "stream": "yes"},
    {"type": "options", "events": 1},
    {"type": "audio_start", "sample_rate": 48000},
    {"type": "audio_start", "format": "wav"},
    {"type": "audio_start", "silence_ms": 50},
    {"type": "audio_start", "vad": "yes"},
    {"type": "audio_append"},
    {"type": "audio_append", "data": ""},
    {"type": "video"},
    {"content": "no type"},
]


def client_validators(doc: dict[str, Any]) -> list[jsonschema.Draft7Validator]:
    return [payload_validator(doc, m) for m in sorted(CLIENT_MESSAGES)]


def test_client_schemas_accept_what_the_engine_accepts_and_refuse_what_it_refuses() -> None:
    validators = client_validators(asyncapi())
    for frame in VALID_CLIENT:
        parse_client_frame(json.dumps(frame), max_bytes=1 << 20, max_text_chars=4000)
        assert sum(v.is_valid(frame) for v in validators) == 1, frame
    for frame in INVALID_CLIENT:
        with pytest.raises(ProtocolError):
            parse_client_frame(json.dumps(frame), max_bytes=1 << 20, max_text_chars=4000)
        assert not any(v.is_valid(frame) for v in validators), frame


def test_the_wheel_ships_the_asyncapi_document(tmp_path: Path) -> None:
    """Built from a copy of the sources, as the image's ``pip install .`` builds it."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in ("gateway", "operator", "contract", "engine-image/tutor_engine"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")]
    subprocess.run([*pip, *build, str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    archive = zipfile.ZipFile(wheel)
    assert archive.read("tutor_gateway/asyncapi.yaml") == ASYNCAPI_FILE.read_bytes()
    metadata = next(n for n in archive.namelist() if n.endswith("METADATA"))
    assert "Requires-Dist: fastapi-offline" in archive.read(metadata).decode()


def spoken_pcm() -> bytes:
    """A spoken question as raw 16 kHz PCM16 (espeak-ng: real speech for the server's VAD)."""
    from bench.questions import spoken

    with wave.open(io.BytesIO(spoken("short"))) as wav:
        return wav.readframes(wav.getnframes())


# --- what the servers really send --------------------------------------------------------------


class Conversation:
    """A client socket whose every received message is checked against the document."""

    def __init__(self, ws: ClientConnection, matcher: Matcher, client: list[Any]) -> None:
        self.ws = ws
        self.matcher = matcher
        self.client = client

    def send(self, message: Any) -> None:
        self.client.append(message)
        self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    def recv(self, timeout: float = 60) -> tuple[str, dict[str, Any]]:
        message = json.loads(self.ws.recv(timeout=timeout))
        return self.matcher.check(message), message

    def until(self, wanted: str, timeout: float = 60) -> list[str]:
        """Message ids up to and including the first ``wanted``."""
        ids: list[str] = []
        deadline = time.monotonic() + timeout
        while not ids or ids[-1] != wanted:
            kind, message = self.recv(timeout=max(0.1, deadline - time.monotonic()))
            assert kind not in ("error",) or wanted == "error", summary(message)
            ids.append(kind)
        return ids


def test_every_message_the_servers_send_fits_the_document(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Engines started from here load for a while (a cold start to report) and write their
    # replies word by word (something to barge in on).
    monkeypatch.setenv("ENGINE_LLM_MOCK_LOAD_SECONDS", "2")
    monkeypatch.setenv("ENGINE_LLM_MOCK_TOKEN_SECONDS", "0.05")
    doc = asyncapi()
    matcher = Matcher(doc)
    sent: list[Any] = []
    server = gateway_factory()
    session = create_session(server, tutor_id=21)
    url = f"{server.ws}/ws/ws/{session['session_id']}?token={session['engine_token']}&events=1"
    with connect(url, max_size=None, open_timeout=30) as ws:
        talk = Conversation(ws, matcher, sent)
        # Cold start: status events, then the seed's answer to text.
        talk.send({"type": "text", "content": "hello"})
        first = talk.until("text")
        assert first[-2:] == ["status", "text"] and set(first[:-1]) == {"status"}, first
        # The seed's audio turn.
        talk.send({"type": "audio", "data": base64.b64encode(make_wav("a prime")).decode()})
        assert talk.until("audio") == ["transcription", "text", "audio"]
        # Streaming.
        talk.send({"type": "options", "stream": True})
        assert talk.until("options") == ["options"]
        talk.send({"type": "text", "content": "tell me about prime numbers"})
        assert set(talk.until("textFinal")[:-1]) == {"textDelta"}
        talk.send({"type": "audio", "data": base64.b64encode(make_wav("and primes?")).decode()})
        spoken = talk.until("textFinal")
        assert spoken[0] == "transcription" and "audioChunk" in spoken and "textDelta" in spoken
        # Barge-in: a new message while the reply is being written.
        talk.send({"type": "text", "content": " ".join(["word"] * 60)})
        assert talk.until("textDelta")[-1] == "textDelta"
        talk.send({"type": "text", "content": "stop, another question"})
        cut = talk.until("interrupted")
        assert set(cut[:-1]) <= {"textDelta"}
        assert set(talk.until("textFinal")[:-1]) == {"textDelta"}
        # Errors; the connection stays usable.
        for bad in ('{"type": "video"}', "not json", '{"type": "text", "content": ""}'):
            talk.send(bad)
            assert talk.until("error") == ["error"]
        talk.send({"type": "options", "stream": False})
        assert talk.until("options") == ["options"]
        talk.send({"type": "text", "content": "still there?"})
        assert talk.until("text") == ["text"]
        # Streamed audio input: push to talk (commit), then the server's VAD ending the turn.
        talk.send({"type": "audio_start", "vad": False})
        assert talk.until("audioStarted") == ["audioStarted"]
        speech = spoken_pcm()
        talk.send(speech[:32000])  # a binary frame
        talk.send({"type": "audio_append", "data": base64.b64encode(speech[32000:64000]).decode()})
        talk.send({"type": "audio_commit"})
        assert talk.until("audio") == ["transcription", "text", "audio"]
        talk.send({"type": "audio_start", "silence_ms": 300})
        assert talk.until("audioStarted") == ["audioStarted"]
        for i in range(0, len(speech), 3200):  # 100 ms frames
            talk.send(speech[i : i + 3200])
        talk.send(bytes(32000))  # 1 s of silence
        heard = talk.until("audio")
        assert heard == ["speechStarted", "speechStopped", "transcription", "text", "audio"]
        talk.send({"type": "audio_cancel"})  # nothing buffered: settled without a message
        talk.send({"type": "text", "content": "and now typed"})
        assert talk.until("text") == ["text"]

    # The split-mode path, the token as a subprotocol.
    other = create_session(server, tutor_id=21, student_id=2)
    with connect(
        f"{server.ws}/ws/{other['session_id']}",
        subprotocols=[auth.SUBPROTOCOL, f"{auth.TOKEN_PROTOCOL_PREFIX}{other['engine_token']}"],
        max_size=None,
        open_timeout=30,
    ) as ws:
        assert ws.subprotocol == auth.SUBPROTOCOL
        talk = Conversation(ws, matcher, sent)
        talk.send({"type": "text", "content": "hello again"})
        assert talk.until("text") == ["text"]

    # A refused connection: an error, then a close code the document lists.
    table = {int(c) for c in re.findall(r"^\| (\d{4}) \|", doc["info"]["description"], re.M)}
    with connect(f"{server.ws}/ws/ws/{session['session_id']}?token=wrong") as ws:
        talk = Conversation(ws, matcher, sent)
        assert talk.until("error") == ["error"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code in table

    # Every server message of the document was seen; every message sent fits a client one.
    assert set(matcher.seen) == server_message_ids(doc), matcher.seen
    validators = client_validators(doc)
    for message in sent:
        if isinstance(message, dict) and message.get("content") != "":
            assert any(v.is_valid(message) for v in validators), message
