"""``/docs`` and ``/redoc`` in real headless Chromium with no network: they render the API.

The browser's proxy is a closed loopback port and its resolver maps every name but the
gateway's address to nothing, so a page that fetched anything from a CDN (Swagger UI's and
ReDoc's defaults) would stay blank. Every request the page made is read from Chromium's
network log and must have gone to the gateway. Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.servers import RunningServer

from .conftest import _browser_and_driver, save_artifacts, wait_until

OPERATIONS = {
    ("GET", "/v1/sessions"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions/{session_id}"),
    ("DELETE", "/v1/sessions/{session_id}"),
    ("GET", "/health"),
}
EXAMPLE_SESSION_ID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture(scope="module")
def offline_browser() -> Iterator[Any]:
    """Headless Chromium that can reach 127.0.0.1 only, with its network log on."""
    binary, driver_path = _browser_and_driver()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        dead_proxy = closed.getsockname()[1]
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            f"--proxy-server=http://127.0.0.1:{dead_proxy}",
            "--proxy-bypass-list=127.0.0.1",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1280,1600",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def requested_urls(driver: Any) -> tuple[list[str], list[str]]:
    """The URLs the page fetched since the log was last read (Chromium's network log), and
    those it asked for that its Content-Security-Policy blocked before any request was sent."""
    asked: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            asked[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            blocked.add(params["requestId"])
    fetched = [url for request, url in asked.items() if request not in blocked]
    return fetched, [asked[request] for request in blocked if request in asked]


def load(driver: Any, url: str) -> None:
    driver.get("about:blank")
    driver.get_log("performance")
    driver.get_log("browser")
    driver.get(url)


def assert_only_the_gateway(driver: Any, gateway: RunningServer) -> list[str]:
    urls, blocked = requested_urls(driver)
    print(f"fetched {len(urls)} URLs; blocked by the page's CSP: {blocked}")
    origin = urlsplit(gateway.http).netloc
    foreign = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
    foreign = [u for u in foreign if urlsplit(u).netloc != origin]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"
    assert any(u.endswith("/openapi.json") for u in urls), urls
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    # The one error allowed: the page's CSP refusing a foreign URL (ReDoc's logo).
    unexpected = [m for m in errors if not ("violates" in m and any(b in m for b in blocked))]
    assert not unexpected, unexpected
    return urls


def test_swagger_ui_renders_every_operation_offline(
    offline_browser: Any, gateway: RunningServer
) -> None:
    driver = offline_browser
    load(driver, f"{gateway.http}/docs")
    try:
        blocks = wait_until(
            lambda: (
                (found := driver.find_elements("css selector", ".opblock"))
                and len(found) >= len(OPERATIONS)
                and found
            ),
            60,
            "Swagger UI's operations",
        )
        shown = set()
        for block in blocks:
            method = block.find_element("css selector", ".opblock-summary-method").text
            path = block.find_element("css selector", ".opblock-summary-path").text
            shown.add((method.strip(), path.strip().replace("\u200b", "")))
        assert shown == OPERATIONS
        links = driver.find_elements("css selector", ".info a[href='/asyncapi.yaml']")
        assert links, "the description links the AsyncAPI document"
        # The create operation shows its documented example, not "string".
        post = next(b for b in blocks if "opblock-post" in b.get_attribute("class"))
        post.find_element("css selector", ".opblock-summary").click()
        wait_until(lambda: EXAMPLE_SESSION_ID in post.text, 30, "the 201 example in the POST block")
        assert '"string"' not in post.find_element("css selector", ".responses-wrapper").text
        assert_only_the_gateway(driver, gateway)
        save_artifacts(driver, "docs-swagger")
    except BaseException:
        save_artifacts(driver, "docs-swagger-failed")
        raise


def test_redoc_renders_every_operation_offline(
    offline_browser: Any, gateway: RunningServer
) -> None:
    driver = offline_browser
    load(driver, f"{gateway.http}/redoc")
    try:
        sections = wait_until(
            lambda: (
                (found := driver.find_elements("css selector", "[data-section-id^='operation/']"))
                and len(found) >= len(OPERATIONS)
                and found
            ),
            60,
            "ReDoc's operations",
        )
        ids = {s.get_attribute("data-section-id") for s in sections}
        assert ids == {
            f"operation/{name}"
            for name in (
                "list_sessions",
                "create_session",
                "get_session",
                "delete_session",
                "health",
            )
        }
        headings = [s.find_element("css selector", "h2").text for s in sections]
        assert all(headings), headings
        body = driver.find_element("css selector", "body").text
        assert EXAMPLE_SESSION_ID in body, "response samples show the examples"
        assert driver.find_elements("css selector", "a[href='/asyncapi.yaml']")
        assert_only_the_gateway(driver, gateway)
        save_artifacts(driver, "docs-redoc")
    except BaseException:
        save_artifacts(driver, "docs-redoc-failed")
        raise


def test_the_linked_asyncapi_document_loads_from_the_docs_page(
    offline_browser: Any, gateway: RunningServer
) -> None:
    driver = offline_browser
    load(driver, f"{gateway.http}/docs")
    link = wait_until(
        lambda: driver.find_elements("css selector", ".info a[href='/asyncapi.yaml']"),
        60,
        "the AsyncAPI link",
    )[0]
    script = (
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(async (r) => done([r.status, r.headers.get('content-type'),"
        " await r.text()]), (e) => done([0, '', String(e)]));"
    )
    status, media_type, text = driver.execute_async_script(script, link.get_attribute("href"))
    assert (status, media_type) == (200, "application/yaml")
    assert text.startswith("asyncapi: 3.0.0")
