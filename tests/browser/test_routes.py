"""The routes that serve the browser side: content types, cache validation, the setting."""

from __future__ import annotations

import httpx
import pytest

FILES = {
    "/demo": "text/html; charset=utf-8",
    "/static/tutor-client.js": "text/javascript; charset=utf-8",
    "/static/demo.js": "text/javascript; charset=utf-8",
    "/static/demo.css": "text/css; charset=utf-8",
}


@pytest.mark.parametrize("path", sorted(FILES))
def test_files_have_their_type_and_revalidate_with_an_etag(gateway, path: str) -> None:
    response = httpx.get(f"{gateway.http}{path}")
    assert response.status_code == 200
    assert response.headers["content-type"] == FILES[path]
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    again = httpx.get(f"{gateway.http}{path}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag


def test_client_module_is_importable_from_other_origins(gateway) -> None:
    headers = httpx.get(f"{gateway.http}/static/tutor-client.js").headers
    assert headers["access-control-allow-origin"] == "*"
    assert headers["cross-origin-resource-policy"] == "cross-origin"


def test_demo_page_loads_only_its_own_files(gateway) -> None:
    response = httpx.get(f"{gateway.http}/demo")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "http://" not in response.text.replace('href="/', "").split("<body")[0]


def test_only_listed_files_are_served(gateway) -> None:
    for path in ("/static/package.json", "/static/..%2Fapi%2Fdemo.py", "/static/"):
        assert httpx.get(f"{gateway.http}{path}").status_code == 404, path


def test_demo_off_keeps_the_client_module(gateway_factory) -> None:
    server = gateway_factory(demo_enabled=False)
    for path in ("/demo", "/static/demo.js", "/static/demo.css"):
        assert httpx.get(f"{server.http}{path}").status_code == 404, path
    assert httpx.get(f"{server.http}/static/tutor-client.js").status_code == 200
    assert "/demo" not in httpx.get(f"{server.http}/openapi.json").text
