"""Sessions stored as TutorSession resources; reads come from the watch-fed cache."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator

import httpx2
from cachetools import TTLCache
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType
from tutor_contract.crd import EXPIRED

from ..policy import has_capacity
from ..sessions import CapacityError, Endings, EndReason, Session, StoreUnavailable
from .reflector import Obj, Reflector
from .resources import TutorSession, activity_patch, build_session, session_of

log = logging.getLogger("tutor_gateway.kube")


@contextlib.contextmanager
def _api(action: str) -> Iterator[None]:
    """Turn API failures (other than those the caller handles) into StoreUnavailable."""
    try:
        yield
    except ApiError as exc:
        if exc.status.code == 404:
            raise
        raise StoreUnavailable(f"Kubernetes API refused to {action}: {exc.status.message}") from exc
    except httpx2.HTTPError as exc:
        detail = str(exc) or type(exc).__name__  # a timeout's text is empty
        raise StoreUnavailable(f"Kubernetes API unreachable ({action}): {detail}") from exc


class KubeSessionStore(Endings):
    """The SessionStore of the cluster mode. Every gateway replica sees the same sessions."""

    def __init__(
        self,
        client: AsyncClient,
        reflector: Reflector,
        namespace: str,
        max_sessions: int,
        session_timeout: float,
        activity_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.client = client
        self.reflector = reflector
        self.namespace = namespace
        self.max_sessions = max_sessions
        self.session_timeout = session_timeout
        self.activity_interval = activity_interval
        self._clock = clock
        self._patched: TTLCache[str, float] = TTLCache(100_000, max(activity_interval, 1) * 4)
        reflector.add_listener(self._on_event)

    async def _on_event(self, event: str, obj: Obj) -> None:
        if event != "DELETED":
            return
        status = obj.get("status") or {}
        reason: EndReason = "expired" if status.get("phase") == EXPIRED else "deleted"
        await self._removed(session_of(obj, self._clock()), reason)

    def _live(self) -> list[Obj]:
        return [o for o in self.reflector.objects.values() if not _ending(o)]

    async def create(
        self, tutor_id: int, student_id: int, kb_id: str | None, token_hash: str
    ) -> Session:
        if not has_capacity(len(self._live()), self.max_sessions):
            raise CapacityError(f"Maximum number of sessions reached ({self.max_sessions})")
        body = build_session(
            str(uuid.uuid4()), tutor_id, student_id, kb_id, token_hash, self.session_timeout
        )
        body["metadata"]["namespace"] = self.namespace  # where lightkube creates it
        with _api("create the session"):
            created = await self.client.create(TutorSession.from_dict(body))
        obj = created.to_dict()
        self.reflector.objects.setdefault(obj["metadata"]["name"], obj)
        return session_of(obj, self._clock())

    async def get_object(self, session_id: str) -> Obj | None:
        """The TutorSession from the cache, or from the API if this replica has not seen it yet."""
        obj = self.reflector.objects.get(session_id)
        if obj is None and session_id not in self._ended:
            try:
                with _api("read the session"):
                    found = await self.client.get(
                        TutorSession, session_id, namespace=self.namespace
                    )
            except ApiError:  # 404
                return None
            obj = found.to_dict()
        return None if obj is None or _ending(obj) else obj

    async def get(self, session_id: str) -> Session | None:
        obj = await self.get_object(session_id)
        return None if obj is None else session_of(obj, self._clock())

    async def list(self) -> list[Session]:
        now = self._clock()
        return sorted((session_of(o, now) for o in self._live()), key=lambda s: s.created_at)

    async def count(self) -> int:
        return len(self._live())

    async def delete(self, session_id: str, reason: EndReason = "deleted") -> Session | None:
        obj = await self.get_object(session_id)
        if obj is None:
            return None
        with contextlib.suppress(ApiError), _api("delete the session"):  # 404: already gone
            await self.client.delete(TutorSession, session_id, namespace=self.namespace)
        return session_of(obj, self._clock())

    async def touch(self, session_id: str) -> None:
        """Record activity on the session's status, at most once per ``activity_interval``."""
        now = self._clock()
        if now - self._patched.get(session_id, 0.0) < self.activity_interval:
            return
        self._patched[session_id] = now
        try:
            await self.client.patch(
                TutorSession.Status,
                session_id,
                activity_patch(now),
                namespace=self.namespace,
                patch_type=PatchType.MERGE,
            )
        except httpx2.HTTPError as exc:
            log.warning("could not record activity on %s: %s", session_id[:8], exc)


def _ending(obj: Obj) -> bool:
    """Whether a TutorSession is on its way out (expired or being deleted)."""
    status = obj.get("status") or {}
    return bool(obj["metadata"].get("deletionTimestamp")) or status.get("phase") == EXPIRED
