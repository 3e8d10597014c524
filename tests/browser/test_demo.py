"""GET /demo in headless Chromium: a spoken conversation with the real speech models, a typed
question, barge-in, latency; the management key; a phone-sized, labelled page."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("selenium", reason="selenium is in the test extra: make test installs it")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.support.processes import ServerProcess

from .conftest import open_page, save_artifacts, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Generous: a cold engine loads tiny.en and Piper, and the CPU is slow and shared.
ENGINE_START = 300
TURN = 180

# Every change of <body>'s data attributes, in order, as "name=value".
WATCH_BODY = """
window.__changes = [];
new MutationObserver((records) => {
  for (const record of records) {
    const name = record.attributeName.replace(/^data-/, "");
    window.__changes.push(`${name}=${document.body.getAttribute(record.attributeName)}`);
  }
}).observe(document.body, { attributes: true });
window.__engineTexts = [];
const engine = document.getElementById("engine-status");
new MutationObserver(() => window.__engineTexts.push(engine.textContent))
  .observe(engine, { childList: true, characterData: true, subtree: true });
"""


def data(driver: Any, name: str) -> str | None:
    return driver.execute_script(f"return document.body.dataset[{name!r}] ?? null")


def changes(driver: Any) -> list[str]:
    return driver.execute_script("return window.__changes")


def texts(driver: Any, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def wait_data(driver: Any, name: str, value: str, timeout: float, gateway=None) -> None:
    wait_until(lambda: data(driver, name) == value, timeout, f"data-{name}={value}", gateway)


def wait_count(driver: Any, selector: str, count: int, timeout: float, gateway=None) -> list[str]:
    return wait_until(
        lambda: (found := texts(driver, selector)) and len(found) >= count and found,
        timeout,
        f"{count} × {selector}",
        gateway,
    )


def ordered(sequence: list[str], *wanted: str) -> bool:
    """Whether ``wanted`` occur in ``sequence`` in this order (not necessarily adjacent)."""
    rest = iter(sequence)
    return all(item in rest for item in wanted)


def test_spoken_and_typed_conversation_with_barge_in(
    page: Any, speech_gateway: ServerProcess
) -> None:
    gateway = speech_gateway
    open_page(page, f"{gateway.http}/demo")
    page.execute_script(WATCH_BODY)
    tutor = page.find_element(By.ID, "tutor-id")
    tutor.clear()
    tutor.send_keys("21")  # no other test uses tutor 21: its engine starts cold here
    page.find_element(By.ID, "start").click()

    wait_data(page, "engine", "ready", ENGINE_START, gateway)
    assert "waiting for the tutor engine…" in page.execute_script("return window.__engineTexts")
    assert ordered(changes(page), "connection=open", "engine=waiting", "engine=ready")

    # A spoken question: the fake microphone says it, the page sends it when it stops.
    page.find_element(By.ID, "talk").click()
    spoken = wait_count(page, "#transcript .user.spoken .text", 1, TURN, gateway)
    assert {"capital", "france"} <= set(re.findall(r"[a-z]+", spoken[0].lower())), spoken
    wait_count(page, "#transcript .tutor.final", 1, TURN, gateway)
    reply = texts(page, "#transcript .tutor.final .text")[0]
    assert "heard:" in reply and "capital" in reply.lower(), reply
    wait_data(page, "playback", "ended", TURN, gateway)
    assert ordered(changes(page), "recording=recording", "recording=sent", "playback=playing")
    latency = data(page, "latencyMs")
    assert latency is not None and latency.isdigit(), latency
    assert (
        f"first audio {latency} ms after the end of speech"
        in page.find_element(By.ID, "latency").text
    )
    assert texts(page, "#transcript .tutor.final .latency")

    # A typed question.
    box = page.find_element(By.ID, "message")
    box.send_keys("What is a prime number?", Keys.ENTER)
    wait_until(
        lambda: any("prime number" in t for t in texts(page, "#transcript .tutor.final .text")),
        TURN,
        "the reply to the typed question",
        gateway,
    )
    assert texts(page, "#transcript .user.typed .text") == ["What is a prime number?"]

    # Barge-in: the student speaks while the reply to a spoken question plays.
    page.find_element(By.ID, "talk").click()
    wait_count(page, "#transcript .user.spoken", 2, TURN, gateway)
    wait_data(page, "playback", "playing", TURN, gateway)
    page.execute_script("window.__changes = []")
    page.find_element(By.ID, "talk").click()
    barge_in = ("playback=stopped", "recording=recording", "recording=sent")
    wait_until(lambda: ordered(changes(page), *barge_in), TURN, "barge-in", gateway)
    assert page.find_elements(By.CSS_SELECTOR, "#transcript .tutor.cut")
    wait_count(page, "#transcript .user.spoken", 3, TURN, gateway)
    next_reply = ("playback=stopped", "playback=playing", "playback=ended")
    wait_until(lambda: ordered(changes(page), *next_reply), TURN, "the next reply", gateway)
    assert not texts(page, "#transcript .error"), texts(page, "#transcript .error")

    severe = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    assert save_artifacts(page, "demo-conversation").stat().st_size > 0


def test_management_key_is_sent_and_kept_only_in_memory(page: Any, gateway_factory) -> None:
    server = gateway_factory(management_api_keys="mk-secret-123")  # required, not just sent
    open_page(page, f"{server.http}/demo")
    page.execute_script(
        """
        window.__requests = [];
        const fetch0 = window.fetch;
        window.fetch = (url, init = {}) => {
          window.__requests.push({ url: String(url), method: init.method,
                                   authorization: (init.headers || {}).Authorization ?? null });
          return fetch0(url, init);
        };
        """
    )
    page.find_element(By.ID, "management-key").send_keys("mk-secret-123")
    page.find_element(By.ID, "start").click()
    wait_data(page, "engine", "ready", ENGINE_START)
    page.find_element(By.ID, "end").click()
    wait_data(page, "connection", "closed", TURN)
    assert "4410" in page.find_element(By.ID, "connection-status").text
    requests = page.execute_script("return window.__requests")
    assert [(r["method"], r["authorization"]) for r in requests] == [
        ("POST", "Bearer mk-secret-123"),
        ("DELETE", "Bearer mk-secret-123"),
    ]
    stored = page.execute_script(
        "return [JSON.stringify(localStorage), JSON.stringify(sessionStorage), document.cookie]"
    )
    assert not any("mk-secret-123" in s for s in stored), stored
    page.refresh()
    open_page(page, f"{server.http}/demo")
    assert page.find_element(By.ID, "management-key").get_attribute("value") == ""


def test_demo_is_labelled_keyboard_usable_and_fits_a_phone(page: Any, gateway_factory) -> None:
    server = gateway_factory()
    open_page(page, f"{server.http}/demo")
    unlabelled = page.execute_script(
        """
        return [...document.querySelectorAll("input, button")]
          .filter((e) => e.tagName === "INPUT" ? e.labels.length === 0 : !e.textContent.trim())
          .map((e) => e.id);
        """
    )
    assert unlabelled == []
    width, viewport = page.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert viewport <= 400 and width <= viewport
    # Every control is reached with Tab, in reading order; Enter in a field starts a session.
    body = page.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    reached = []
    for _ in range(12):
        reached.append(page.switch_to.active_element.get_attribute("id"))
        page.switch_to.active_element.send_keys(Keys.TAB)
    session_controls = ["tutor-id", "student-id", "kb-id", "management-key", "stream", "auto-send"]
    assert ordered(reached, *session_controls, "start"), reached
    page.find_element(By.ID, "student-id").send_keys(Keys.ENTER)
    wait_data(page, "connection", "open", TURN)
    assert page.find_element(By.ID, "talk").is_enabled()
