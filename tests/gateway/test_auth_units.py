"""The pure parts of tutor_gateway.auth: parsing, constant-time matching, the key file's
reloading (with a fake clock), the WebSocket token and subprotocol, the Origin list, the
startup warnings, and the log redaction of every credential."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tutor_contract.logs import redact
from tutor_gateway import auth
from tutor_gateway.tokens import hash_token

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_parse_from_the_variable_and_the_file() -> None:
    assert auth.env_keys(" a , b,,c ") == ["a", "b", "c"]
    assert auth.env_keys("") == []
    assert auth.file_keys("# rotated 2026-12-01\n  new-key \n\nold-key\r\n") == [
        "new-key",
        "old-key",
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
        ("abc", None),
    ],
)
def test_bearer_credentials(header: str | None, expected: str | None) -> None:
    assert auth.bearer_credentials(header) == expected


def test_find_key_compares_digests_and_names_the_match() -> None:
    digests = [hash_token("first-key"), hash_token("second-key")]
    assert auth.find_key("second-key", digests) == digests[1]
    assert auth.find_key("first-key", digests) == digests[0]
    for wrong in ("second-ke", "second-key ", "SECOND-KEY", "", "x" * 10_000):
        assert auth.find_key(wrong, digests) is None
    assert auth.find_key("first-key", []) is None


def test_key_id_is_stable_short_and_neither_the_key_nor_its_digest() -> None:
    digest = hash_token("a-key")
    assert auth.key_id(digest) == auth.key_id(hash_token("a-key"))
    assert len(auth.key_id(digest)) == 12
    assert auth.key_id(digest) not in digest and auth.key_id(digest) != auth.key_id(hash_token("b"))


def test_keys_are_held_only_as_digests() -> None:
    keys = auth.ManagementKeys("plain-secret-one,plain-secret-two")
    held = repr(vars(keys))
    assert "plain-secret" not in held
    assert hash_token("plain-secret-one") in held


def test_no_key_means_open_and_a_key_means_checked() -> None:
    assert auth.ManagementKeys("").check(None) == auth.OPEN
    keys = auth.ManagementKeys("k1-0123456789abcdef, k2-0123456789abcdef")
    assert keys.enabled and keys.count == 2
    assert keys.check(None) == auth.KeyCheck(False, problem="missing")
    assert keys.check("Basic azE=") == auth.KeyCheck(False, problem="missing")
    assert keys.check("Bearer nope") == auth.KeyCheck(False, problem="invalid")
    first, second = (
        keys.check("Bearer k1-0123456789abcdef"),
        keys.check("Bearer k2-0123456789abcdef"),
    )
    assert first.allowed and second.allowed and first.key_id != second.key_id


def test_challenges_follow_rfc_6750() -> None:
    detail, headers = auth.challenge("missing")
    assert "Authorization: Bearer" in detail
    assert headers == {"WWW-Authenticate": 'Bearer realm="tutor-gateway"'}
    detail, headers = auth.challenge("invalid")
    assert detail == "Invalid management API key"
    assert headers == {"WWW-Authenticate": 'Bearer realm="tutor-gateway", error="invalid_token"'}


def test_the_key_file_is_reread_when_it_changes_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("old-key-0123456789\n")
    clock = Clock()
    keys = auth.ManagementKeys("", path, clock=clock)
    assert keys.check("Bearer old-key-0123456789").allowed
    path.write_text("old-key-0123456789\nnew-key-0123456789\n")
    assert not keys.check("Bearer new-key-0123456789").allowed  # not looked at yet
    clock.now += 1.0
    assert keys.check("Bearer new-key-0123456789").allowed
    # Replaced atomically (a new inode, as a Kubernetes Secret volume does), same size.
    replacement = tmp_path / "keys.new"
    replacement.write_text("new-key-0123456789\n")
    os.replace(replacement, path)
    clock.now += 0.5
    assert keys.check("Bearer old-key-0123456789").allowed  # within the second
    clock.now += 0.5
    assert not keys.check("Bearer old-key-0123456789").allowed
    assert keys.check("Bearer new-key-0123456789").allowed


def test_an_unchanged_file_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys"
    path.write_text("a-key-0123456789abc\n")
    clock = Clock()
    keys = auth.ManagementKeys("", path, clock=clock)
    reads = []
    original = Path.read_text
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: reads.append(self) or original(self, *a, **k)
    )
    for _ in range(5):
        clock.now += 2
        assert keys.check("Bearer a-key-0123456789abc").allowed
    assert reads == []


def test_a_missing_file_fails_at_startup_and_keeps_the_last_keys_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(auth.KeyFileError, match=r"MANAGEMENT_API_KEYS_FILE=.*missing"):
        auth.ManagementKeys("", tmp_path / "missing")
    path = tmp_path / "keys"
    path.write_text("kept-key-0123456789\n")
    clock = Clock()
    keys = auth.ManagementKeys("", path, clock=clock)
    path.unlink()
    clock.now += 1
    assert keys.check("Bearer kept-key-0123456789").allowed
    assert "cannot be read" in caplog.text and "kept-key" not in caplog.text
    path.write_text("next-key-0123456789\n")
    clock.now += 1
    assert keys.check("Bearer next-key-0123456789").allowed
    assert not keys.check("Bearer kept-key-0123456789").allowed


def test_an_empty_file_refuses_everything_but_the_variables_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# no keys yet\n")
    keys = auth.ManagementKeys("", path)
    assert keys.enabled and keys.count == 0
    assert keys.check("Bearer anything").problem == "invalid"
    both = auth.ManagementKeys("env-key-0123456789", path)
    assert both.check("Bearer env-key-0123456789").allowed


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("tutor.internal", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback


def test_startup_warnings() -> None:
    open_ = auth.ManagementKeys("")
    [warning] = auth.startup_warnings("0.0.0.0", open_)
    assert "management API is open" in warning and "MANAGEMENT_API_KEYS" in warning
    assert auth.startup_warnings("127.0.0.1", open_) == []
    assert auth.startup_warnings("0.0.0.0", auth.ManagementKeys("a" * 40)) == []
    [short] = auth.startup_warnings("0.0.0.0", auth.ManagementKeys("tiny-key"))
    assert short.startswith("1 management API keys are shorter than 16") and "tiny" not in short


@pytest.mark.parametrize(
    ("path", "metrics", "protected"),
    [
        ("/v1/sessions", False, True),
        ("/v1", False, True),
        ("/v1/anything/else", False, True),
        ("/mgmt/v1/sessions/x", False, True),
        ("/v10/sessions", False, False),
        ("/health", True, False),
        ("/metrics", False, False),
        ("/metrics", True, True),
        ("/ws/ws/x", True, False),
        ("/docs", True, False),
    ],
)
def test_protected_paths(path: str, metrics: bool, protected: bool) -> None:
    assert auth.is_protected(path, metrics) is protected


def test_websocket_token_and_subprotocol() -> None:
    assert auth.websocket_token(["tutor.v1", "token.abc"], None) == "abc"
    assert auth.websocket_token(["token.abc", "tutor.v1"], "query") == "abc"  # the header wins
    assert auth.websocket_token(["tutor.v1"], "query") == "query"
    assert auth.websocket_token(["token."], "query") == "query"
    assert auth.websocket_token([], None) is None
    assert auth.select_subprotocol(["tutor.v1", "token.abc"]) == "tutor.v1"
    assert auth.select_subprotocol(["token.abc"]) is None  # never the token
    assert auth.select_subprotocol([]) is None


def test_origins() -> None:
    allowed = auth.parse_origins(
        "https://Tutor.example.edu/, http://localhost:8080,https://a.b:443"
    )
    assert allowed == {"https://tutor.example.edu", "http://localhost:8080", "https://a.b"}
    assert auth.origin_allowed("https://tutor.example.edu", allowed)
    assert auth.origin_allowed("https://a.b", allowed)
    assert auth.origin_allowed(None, allowed)  # not a browser
    assert not auth.origin_allowed("https://evil.example", allowed)
    assert not auth.origin_allowed("null", allowed)
    assert not auth.origin_allowed("http://tutor.example.edu", allowed)
    assert auth.origin_allowed("https://anything", frozenset())
    for bad in ("tutor.example.edu", "https://x/path", "ftp://x", "*"):
        with pytest.raises(ValueError, match="ALLOWED_ORIGINS"):
            auth.parse_origins(bad)


@pytest.mark.parametrize(
    "line",
    [
        "< Authorization: Bearer s3cr3t-key",
        "< authorization: s3cr3t-key",
        "> X-Engine-Key: s3cr3t-key",
        "< Sec-WebSocket-Protocol: tutor.v1, token.s3cr3t-key",
        "< GET /ws/ws/id?token=s3cr3t-key HTTP/1.1",
        "sent bearer s3cr3t-key",
    ],
)
def test_logs_redact_every_credential(line: str) -> None:
    cleaned = redact(line)
    assert "s3cr3t" not in cleaned and "[REDACTED]" in cleaned
