"""The operator's own API client (lightkube) against the emulator, as the chart's RBAC allows.

Each call is bounded, refused if ``kube.CALLS`` (what the chart's Role is tested against)
does not name it, and a pinning patch that conflicts is read again with the operator's own
identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import kopf
import pytest
from tutor_operator.decisions import session_view
from tutor_operator.handlers import configure_kopf
from tutor_operator.kube import PODS, SERVICES, SESSIONS, KubeApi, UndeclaredCall
from tutor_operator.reconcile import Context, _patch_session

from tests.support.cluster import NAMESPACE, KubeClient
from tests.support.kube_emulator import RunningEmulator

from .builders import settings
from .test_operator_flow import session_body

pytestmark = pytest.mark.timeout(60)


def operator_api(url: str, token: str = "", timeout: float = 5.0) -> KubeApi:
    return KubeApi.from_settings(
        settings(api_server=url, api_token=token, api_timeout=timeout, api_connect_timeout=2)
    )


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections, reads, and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers_costs_one_timeout() -> None:
    async with silent_server() as url:
        api = operator_api(url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(kopf.TemporaryError, match=r"no answer within 0\.5s"):
            # The outer bound only keeps a broken client from hanging the suite.
            await asyncio.wait_for(api.get(SESSIONS, NAMESPACE, "s"), 30)
        assert time.monotonic() - started < 10
        await api.close()


async def test_a_hung_write_is_bounded_too(kube_api: RunningEmulator, kube: KubeClient) -> None:
    kube.create("tutorsessions", session_body("s", 1)).raise_for_status()
    api = operator_api(kube_api.url, kube_api.tokens["operator"], timeout=0.5)
    fault = kube_api.inject("hang", resource="tutorsessions/status", methods={"PATCH"})
    with pytest.raises(kopf.TemporaryError, match="no answer"):
        body = {"status": {"phase": "Pending"}}
        patch = api.patch(SESSIONS, NAMESPACE, "s", body, subresource="status")
        await asyncio.wait_for(patch, 30)
    assert fault.hits == 1
    # The next call goes through: nothing is left blocked.
    after = await api.patch(
        SESSIONS, NAMESPACE, "s", {"status": {"phase": "Pending"}}, subresource="status"
    )
    assert after is not None and after["status"]["phase"] == "Pending"
    await api.close()


async def test_calls_missing_from_the_table_are_refused() -> None:
    api = operator_api("http://127.0.0.1:9")  # never contacted
    with pytest.raises(UndeclaredCall, match="services"):
        await api.delete(SERVICES, NAMESPACE, "tutor-1")
    with pytest.raises(UndeclaredCall, match="pods"):
        await api.create(PODS, NAMESPACE, {"metadata": {"name": "p"}})
    await api.close()


async def test_a_conflicting_pin_is_read_again_under_the_charts_rbac(
    kube_api: RunningEmulator, kube: KubeClient
) -> None:
    """The gateway's activity patch lands just before the operator's pinning patch: the
    operator reads the session again (``get``, which its Role must grant) and pins it."""
    kube.create("tutorsessions", session_body("s", 1)).raise_for_status()
    planned = session_view(kube.get("tutorsessions", "s"))
    api = operator_api(kube_api.url, kube_api.tokens["operator"])
    ctx = Context(api, settings())
    fault = kube_api.inject("conflict", resource="tutorsessions/status", methods={"PATCH"})
    pin = {"phase": "Active", "engine": "tutor-1", "pod": "p1", "endpoint": "http://10.0.0.1:8000"}
    after = await _patch_session(ctx, NAMESPACE, planned, pin, guard=True)
    assert fault.hits == 1
    assert after.pod == "p1" and after.phase == "Active"
    assert kube.get("tutorsessions", "s")["status"]["pod"] == "p1"
    await api.close()


async def test_lists_are_plain_json(kube_api: RunningEmulator, kube: KubeClient) -> None:
    api = operator_api(kube_api.url, kube_api.tokens["operator"])
    kube.create("tutorsessions", session_body("a", 1)).raise_for_status()
    listed = await api.list(SESSIONS, NAMESPACE)
    assert [s["metadata"]["name"] for s in listed] == ["a"]
    assert isinstance(listed[0]["spec"], dict) and listed[0]["spec"]["tutorId"] == 1
    await api.close()


def test_kopf_bounds_its_own_calls_and_watches() -> None:
    ours = settings(api_timeout=7, api_connect_timeout=3, watch_timeout=120)
    theirs = kopf.OperatorSettings()
    configure_kopf(theirs, ours)
    assert theirs.networking.request_timeout == 7
    assert theirs.networking.connect_timeout == 3
    assert theirs.watching.server_timeout == 120
    assert theirs.watching.client_timeout == 150
    assert theirs.watching.connect_timeout == 3
    assert theirs.persistence.finalizer == "tutor.vts.dev/finalizer"
