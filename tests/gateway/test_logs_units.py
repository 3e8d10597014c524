"""tutor_contract.logs on its own: the JSON and text formats, the bound ids, redaction of the
final line (message, traceback, extra fields), kopf's handlers adopted, the settings."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import kopf
import pytest
from pydantic import ValidationError
from tutor_contract import logs
from tutor_engine.config import EngineSettings
from tutor_gateway.config import GatewaySettings
from tutor_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-Jq3vX8mN2pL5rT9w"


class Captured:
    """A logger whose lines (through ``logs.handler``) land in a string."""

    def __init__(self, component: str, log_format: str, **fields: object) -> None:
        self.stream = io.StringIO()
        self.handler = logs.handler(component, log_format, **fields)
        self.handler.setStream(self.stream)  # type: ignore[attr-defined]
        self.logger = logging.getLogger(f"tests.logs.{component}.{log_format}")
        self.logger.handlers[:] = [self.handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def json_log() -> Iterator[Captured]:
    captured = Captured("gateway", "json")
    yield captured
    captured.logger.handlers.clear()


def test_a_json_line_has_the_contract_fields_and_the_bound_ids(json_log: Captured) -> None:
    json_log.logger.info("before")
    with logs.bind(session="0123456789abcdef", tutor_id=7):
        json_log.logger.warning("inside %s", "a session")
    json_log.logger.info("after")
    before, inside, after = json_log.records()
    assert list(inside) == [
        "time",
        "level",
        "component",
        "logger",
        "message",
        "session",
        "tutor_id",
    ]
    assert inside["level"] == "WARNING" and inside["component"] == "gateway"
    assert inside["logger"] == json_log.logger.name and inside["message"] == "inside a session"
    assert (inside["session"], inside["tutor_id"]) == ("01234567", 7)  # the short id
    assert str(inside["time"]).endswith("Z") and "T" in str(inside["time"])
    assert "session" not in before and "session" not in after  # the block ended: unbound


def test_an_exception_extra_fields_and_objects_are_redacted_in_the_final_json(
    json_log: Captured,
) -> None:
    class Url:
        def __str__(self) -> str:
            return f"wss://host/ws?token={SECRET}"

    try:
        raise RuntimeError(f"handshake failed: Authorization: Bearer {SECRET}")
    except RuntimeError:
        json_log.logger.exception(
            "GET /ws/ws/abc?token=%s",
            SECRET,
            extra={"url": Url(), "nested": {"h": [f"token.{SECRET}"]}},
        )
    (line,) = json_log.lines()
    assert SECRET not in line
    record = json.loads(line)
    assert record["message"] == "GET /ws/ws/abc?token=[REDACTED]"
    assert "RuntimeError: handshake failed: Authorization: [REDACTED]" in str(record["exc_info"])
    assert "Traceback (most recent call last)" in str(record["exc_info"])
    assert record["url"] == "wss://host/ws?token=[REDACTED]"
    assert record["nested"] == {"h": ["token.[REDACTED]"]}


def test_a_secret_that_needs_json_escaping_stays_valid_json(json_log: Captured) -> None:
    json_log.logger.info('header lines:\r\nX-Engine-Key: %s\r\n"quoted" token=%s"', SECRET, SECRET)
    (line,) = json_log.lines()
    assert SECRET not in line
    assert json.loads(line)["message"] == (
        'header lines:\r\nX-Engine-Key: [REDACTED]\r\n"quoted" token=[REDACTED]"'
    )


def test_tasks_keep_their_own_ids(json_log: Captured) -> None:
    async def connection(session: str, tutor_id: int) -> None:
        logs.bind(session=session, tutor_id=tutor_id)  # as a WebSocket handler does
        await asyncio.sleep(0)
        await asyncio.create_task(child())  # started afterwards: inherits the ids

    async def child() -> None:
        json_log.logger.info("turn")

    async def main() -> None:
        await asyncio.gather(connection("aaaaaaaa-1", 1), connection("bbbbbbbb-2", 2))
        json_log.logger.info("outside")

    asyncio.run(main())
    seen = {(r.get("session"), r.get("tutor_id")) for r in json_log.records()}
    assert seen == {("aaaaaaaa", 1), ("bbbbbbbb", 2), (None, None)}


def test_static_fields_are_defaults_a_bind_overrides() -> None:
    captured = Captured("engine", "json", tutor_id=3)
    captured.logger.info("loaded")
    with logs.bind(session="s1"):
        captured.logger.info("turn", extra={"tutor_id": 9})  # a record's own extra= wins
    loaded, turn = captured.records()
    assert (loaded["component"], loaded["tutor_id"]) == ("engine", 3) and "session" not in loaded
    assert (turn["session"], turn["tutor_id"]) == ("s1", 9)


def test_short_ids_cannot_inject_into_a_text_line() -> None:
    assert logs.short_id("0123456789") == "01234567"
    assert logs.short_id("ab\ncd] x") == "ab?cd??x"


def test_text_lines_carry_the_same_facts_redacted() -> None:
    captured = Captured("engine", "text", tutor_id=3)
    with logs.bind(session="abcdefghijkl"):
        try:
            raise ValueError(f"bad token={SECRET}")
        except ValueError:
            captured.logger.exception("failed for Bearer %s", SECRET)
    text = captured.stream.getvalue()
    assert SECRET not in text
    first = text.splitlines()[0]
    assert first.endswith(
        f"Z ERROR engine {captured.logger.name} [session=abcdefgh tutor_id=3]: "
        "failed for Bearer [REDACTED]"
    )
    assert "ValueError: bad token=[REDACTED]" in text


def test_kopf_json_lines_are_adopted_with_our_fields_and_redacted() -> None:
    root, aio = logging.getLogger(), logging.getLogger("asyncio")  # kopf.configure sets both
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_aio = aio.handlers[:], aio.propagate
    try:
        root.handlers.clear()  # pytest's own stay untouched
        kopf.configure(log_format=kopf.LogFormat.JSON)
        logs.adopt_handlers("operator", "json")
        stream = io.StringIO()
        for handler in root.handlers:
            handler.setStream(stream)  # type: ignore[attr-defined]
        with logs.bind(tutor_id=5):
            try:
                raise RuntimeError(f"401 for Authorization: Bearer {SECRET}")
            except RuntimeError:
                logging.getLogger("tutor_operator.kube").exception("call with token=%s", SECRET)
        (line,) = stream.getvalue().splitlines()
    finally:
        root.handlers[:], root.level = saved_handlers, saved_level
        aio.handlers[:], aio.propagate = saved_aio
    assert SECRET not in line
    record = json.loads(line)
    assert record["component"] == "operator" and record["tutor_id"] == 5
    assert record["logger"] == "tutor_operator.kube" and record["level"] == "ERROR"
    assert record["severity"] == "error" and "timestamp" in record  # kopf's own fields stay
    assert record["message"] == "call with token=[REDACTED]"
    assert "Authorization: [REDACTED]" in str(record["exc_info"])


def test_log_format_is_a_setting_of_each_component(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings(_env_file=None).log_format == "text"  # type: ignore[call-arg]
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("ENGINE_LOG_FORMAT", "json")
    monkeypatch.setenv("TUTOR_OPERATOR_LOG_FORMAT", "json")
    gateway = GatewaySettings(_env_file=None)  # type: ignore[call-arg]
    assert gateway.log_format == "json"
    assert gateway.local_engine_env()["ENGINE_LOG_FORMAT"] == "json"  # local engines follow
    assert EngineSettings(_env_file=None).log_format == "json"  # type: ignore[call-arg]
    assert OperatorSettings(_env_file=None).log_format == "json"  # type: ignore[call-arg]
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        GatewaySettings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.formatter("gateway", "xml")
