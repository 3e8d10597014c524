"""Assembling the local mode: the SQLite session store, engine processes, and their timers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tutor_contract.tasks import cancel_and_wait

from ..config import GatewaySettings
from ..policy import expired_sessions
from ..service import Gateway
from ..sessions import SessionStore
from .engines import LocalEngines
from .registry import EngineRegistry
from .store import SqliteSessionStore

log = logging.getLogger("tutor_gateway")


@dataclass
class LocalHousekeeping:
    """Local mode's timers: expire idle sessions, stop engines with no sessions."""

    store: SessionStore
    engines: LocalEngines
    settings: GatewaySettings

    async def sweep(self, now: float | None = None) -> None:
        """One pass: expire sessions past SESSION_TIMEOUT_SECONDS (their engines told at once,
        each within a bound), then stop idle engines."""
        sessions = await self.store.list()
        now = time.time() if now is None else now
        activity = {s.session_id: s.last_activity for s in sessions}
        expired = expired_sessions(activity, now, self.settings.session_timeout_seconds)
        ending = [self.store.delete(sid, reason="expired") for sid in expired]
        for result in await asyncio.gather(*ending, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result  # once every other one has finished
        busy = {s.tutor_id for s in await self.store.list()}
        await self.engines.stop_idle(busy)

    async def run(self) -> None:
        """Sweep forever at the configured interval (cancelled at shutdown)."""
        interval = min(
            self.settings.reaper_interval_seconds, self.settings.session_timeout_seconds / 4
        )
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("housekeeping pass failed")


@contextlib.asynccontextmanager
async def local_mode(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    """Sessions in STATE_DIR/sessions.db and one engine process per tutor on this machine."""
    store = await SqliteSessionStore.open(
        settings.session_db_path(),
        settings.max_sessions,
        activity_interval=min(
            settings.activity_patch_interval_seconds, settings.session_timeout_seconds / 4
        ),
    )
    try:
        registry = EngineRegistry(settings.state_dir)
        await asyncio.to_thread(registry.stop_stale)  # engines a dead gateway of this dir left
        engines = LocalEngines(
            api_key=settings.engine_api_key or secrets.token_urlsafe(32),
            start_timeout=settings.engine_start_timeout_seconds,
            idle_timeout=settings.engine_idle_timeout_seconds,
            command=settings.engine_command,
            liveness_timeout=settings.engine_liveness_timeout_seconds,
            max_concurrent_starts=settings.max_concurrent_cold_starts,
            registry=registry,
            engine_env=settings.local_engine_env(),
        )
        gateway = Gateway(settings, store, engines)
        timers = LocalHousekeeping(store, engines, settings)
        await timers.sweep()  # sessions that expired while no gateway ran
        housekeeping = asyncio.create_task(timers.run())
        try:
            yield gateway
        finally:
            await cancel_and_wait([housekeeping])
            await engines.close()
    finally:
        await store.close()
