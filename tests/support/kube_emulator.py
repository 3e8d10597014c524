"""A Kubernetes API emulator for tests: kmock 0.8 (pinned) plus what kopf and we need.

``kmock.KubernetesScaffold`` gives the HTTP plumbing, URL parsing, discovery of the built-in
kinds and Kubernetes-style errors. On top of it, ``KubeEmulator`` keeps objects the way an API
server does, which plain kmock does not (see ``/work/shared/notes/kubernetes-api-emulator.md``):

- ``uid``, ``resourceVersion``, ``generation``, ``creationTimestamp``; ``generateName``; 201 on
  POST; 409 on an existing name or a stale ``resourceVersion``; 422 on a failed JSON-patch test;
- merge, strategic-merge (treated as merge) and JSON patches, PUT; the ``status`` subresource
  isolated from the main resource; lists with ``kind`` and ``resourceVersion``; label and field
  selectors on lists and watches;
- watches that resume from ``?resourceVersion`` (410 Gone when too old), honour
  ``timeoutSeconds`` and end on shutdown;
- finalizers and ``deletionTimestamp``; owner-reference garbage collection (background);
- CRDs registered from their manifests (or by POSTing them), with schema defaulting, pruning,
  validation and our CEL rules (``crd_schema``); an invalid object gets 422 with the reasons.

Not emulated: admission webhooks, RBAC, server-side apply, scheduling and controllers (the
fake kubelet in ``kubelet.py`` plays the Deployment controller and kubelet).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import itertools
import json
import pathlib
import random
import re
import string
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from . import crd_schema

CRD_DIR = pathlib.Path(__file__).resolve().parents[2] / "crds"
CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
STATUS = "status"


class ApiError(Exception):
    """An API failure, rendered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def response(self) -> aiohttp.web.Response:
        body = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }
        return aiohttp.web.json_response(body, status=self.code)


@dataclasses.dataclass
class Kind:
    """One served resource: identity, scope, and the CRD schema if it is a custom one."""

    rid: str  # group/version/plural, group empty for the core API
    api_version: str
    kind: str
    namespaced: bool
    subresources: set[str]
    schema: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    rid: str
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rid(resource: Any) -> str:
    return f"{resource.group}/{resource.version}/{resource.plural}"


# -- selectors --------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and not depth:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p.strip() for p in [*parts, current] if p.strip()]


def label_matcher(selector: str | None) -> Any:
    """A predicate over label dicts for a selector like ``a=b,c!=d,e in (x,y),f,!g``."""
    checks = []
    for term in _split(selector or ""):
        if match := _SET_RE.match(term):
            key, op, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
            if op == "in":
                checks.append(lambda labels, k=key, v=values: labels.get(k) in v)
            else:
                checks.append(lambda labels, k=key, v=values: labels.get(k) not in v)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            absent = term[1:].strip()
            checks.append(lambda labels, k=absent: k not in labels)
        else:
            checks.append(lambda labels, k=term: k in labels)
    return lambda labels: all(check(labels or {}) for check in checks)


def field_matcher(selector: str | None) -> Any:
    """A predicate over objects for a field selector like ``metadata.name=x,status.phase!=y``."""
    checks = []
    for term in _split(selector or ""):
        negate = "!=" in term
        path, value = (s.strip() for s in re.split(r"!=|==|=", term, maxsplit=1))

        def check(obj: dict[str, Any], p: str = path, v: str = value, n: bool = negate) -> bool:
            current: Any = obj
            for part in p.split("."):
                current = current.get(part) if isinstance(current, dict) else None
            return (str(current if current is not None else "") == v) != n

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


# -- patches ----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``None`` removes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, move, copy); ``ValueError`` on failure."""
    doc = copy.deepcopy(doc)

    def walk(parts: list[str]) -> tuple[Any, str]:
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(path: str) -> Any:
        node, last = walk(_pointer(path))
        return node[int(last)] if isinstance(node, list) else node[last]

    def remove(path: str) -> Any:
        node, last = walk(_pointer(path))
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)

    def add(path: str, value: Any) -> None:
        node, last = walk(_pointer(path))
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(value))
        else:
            node[last] = copy.deepcopy(value)

    try:
        for op in ops:
            kind, path = op["op"], op["path"]
            if kind == "test" and get(path) != op["value"]:
                raise ValueError(f"test failed at {path}")
            if kind == "add":
                add(path, op["value"])
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                get(path)
                node, last = walk(_pointer(path))
                node[int(last) if isinstance(node, list) else last] = copy.deepcopy(op["value"])
            elif kind == "move":
                add(path, remove(op["from"]))
            elif kind == "copy":
                add(path, get(op["from"]))
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"cannot apply the patch: {exc!r}") from exc
    return doc


# -- the emulator -----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesScaffold):
    """An in-memory Kubernetes API server good enough for kopf, the official client and us."""

    history_size: int = 50_000
    max_watch_seconds: float = 300.0
    _kinds: dict[str, Kind] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[str, str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _history: deque[Event] = attrs.field(init=False)
    _watchers: set[asyncio.Queue[Event | None]] = attrs.field(factory=set, init=False)
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._history = deque(maxlen=self.history_size)
        with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated API
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for resource in list(self.resources):
            info = self.resources[resource]
            api_version = f"{resource.group}/{resource.version}".lstrip("/")
            self._kinds[_rid(resource)] = Kind(
                _rid(resource),
                api_version,
                info.kind or "",
                bool(info.namespaced),
                set(info.subresources),
            )

    # -- registration and direct access (for tests) --

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve the CRD's versions, with its schema, as an API server would after apply."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            schema = version["schema"]["openAPIV3Schema"]
            crd_schema.check_rules(schema)
            subresources = set(version.get("subresources") or {})
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            self.resources[resource] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=subresources,
            )
            rid = _rid(resource)
            api_version = f"{spec['group']}/{version['name']}"
            namespaced = spec.get("scope", "Namespaced") == "Namespaced"
            self._kinds[rid] = Kind(
                rid, api_version, names["kind"], namespaced, subresources, schema
            )

    def load_crds(self, directory: pathlib.Path = CRD_DIR) -> None:
        """Register (and store) every CRD manifest in ``directory``."""
        for path in sorted(directory.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self._insert(self._kinds[CRD_RESOURCE], None, copy.deepcopy(doc))
                    self.register_crd(doc)

    def objects(self, rid: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Snapshot of stored objects of ``rid`` (e.g. ``apps/v1/deployments``)."""
        rid = rid if rid.count("/") == 2 else f"/{rid}"
        return [
            copy.deepcopy(obj)
            for (r, ns, _), obj in self._store.items()
            if r == rid and (namespace is None or ns == namespace)
        ]

    def close_watches(self) -> None:
        """End every open watch stream (at shutdown)."""
        for queue in self._watchers:
            queue.put_nowait(None)

    # -- request dispatch --

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if len(self._requests) > 1000:  # kmock keeps every request; tests do not need them
            del self._requests[:-100]
        resource = request.resource
        if resource is None or not resource.plural or not resource.version:
            return await super()._handle(request)
        kind = self._kinds.get(_rid(resource))
        try:
            if kind is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return await self._serve(request, kind)
        except ApiError as exc:
            return exc.response()

    async def _serve(self, request: kmock.Request, kind: Kind) -> aiohttp.web.StreamResponse:
        method, name, sub = request.method.value, request.name, request.subresource
        namespace = request.namespace if kind.namespaced else None
        if sub and sub not in kind.subresources:
            raise ApiError(404, "NotFound", f"{kind.rid} has no subresource {sub}")
        if method == "GET" and request.params.get("watch") in ("true", "1"):
            return await self._watch(request, kind, namespace)
        if method == "GET" and name:
            return aiohttp.web.json_response(self._get(kind, namespace, name))
        if method == "GET":
            return aiohttp.web.json_response(self._list(request, kind, namespace))
        if method == "POST" and not name:
            created = self._create(kind, namespace, request.data)
            return aiohttp.web.json_response(created, status=201)
        if method in ("PATCH", "PUT") and name:
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            updated = self._update(kind, namespace, name, sub, method, content_type, request.data)
            return aiohttp.web.json_response(updated)
        if method == "DELETE" and name:
            orphan = isinstance(request.data, dict) and (
                request.data.get("propagationPolicy") == "Orphan"
            )
            return aiohttp.web.json_response(self._delete(kind, namespace, name, orphan))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    # -- storage --

    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (kind.rid, namespace or "", name)

    def _get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._store.get(self._key(kind, namespace, name))
        if obj is None:
            group = kind.rid.split("/")[0]
            plural = kind.rid.split("/")[2]
            what = f"{plural}.{group}" if group else plural
            raise ApiError(404, "NotFound", f'{what} "{name}" not found', name=name)
        return obj

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _emit(self, rid: str, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), rid, type_, obj, old)
        self._history.append(event)
        for queue in self._watchers:
            queue.put_nowait(event)

    def _admit(self, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if kind.schema is None:
            return
        crd_schema.prune(kind.schema, obj, root=True)
        crd_schema.apply_defaults(kind.schema, obj)
        problems = crd_schema.validate(kind.schema, obj, old)
        if problems:
            name = obj.get("metadata", {}).get("name", "")
            group = kind.api_version.split("/")[0]
            message = f'{kind.kind}.{group} "{name}" is invalid: ' + ", ".join(problems)
            causes = [{"message": p} for p in problems]
            raise ApiError(422, "Invalid", message, name=name, kind=kind.kind, causes=causes)

    def _insert(self, kind: Kind, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if kind.namespaced:
            meta["namespace"] = namespace
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_now(),
            generation=1,
        )
        meta.pop("deletionTimestamp", None)
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self._store[self._key(kind, namespace, name)] = obj
        self._emit(kind.rid, "ADDED", obj, None)
        return obj

    def _create(self, kind: Kind, namespace: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced and meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if self._key(kind, namespace, meta["name"]) in self._store:
            plural, group = kind.rid.split("/")[2], kind.rid.split("/")[0]
            what = f"{plural}.{group}" if group else plural
            raise ApiError(409, "AlreadyExists", f'{what} "{meta["name"]}" already exists')
        if STATUS in kind.subresources:
            obj.pop(STATUS, None)
        self._admit(kind, obj, None)
        created = self._insert(kind, namespace, obj)
        if kind.rid == CRD_RESOURCE:
            self.register_crd(created)
        return created

    def _update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        sub: str | None,
        method: str,
        content_type: str,
        body: Any,
    ) -> dict[str, Any]:
        old = self._get(kind, namespace, name)
        current_rv = old["metadata"]["resourceVersion"]
        if method == "PUT" or content_type != "application/json-patch+json":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
            if wanted_rv not in (None, "", current_rv):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {kind.rid} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
        if method == "PUT":
            candidate = copy.deepcopy(body)
        elif content_type == "application/json-patch+json":
            try:
                candidate = json_patch(old, body if isinstance(body, list) else [])
            except ValueError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            candidate = merge_patch(old, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")

        if sub == STATUS:
            new = {k: copy.deepcopy(v) for k, v in old.items() if k != STATUS}
            if candidate.get(STATUS) is not None:
                new[STATUS] = candidate[STATUS]
        else:
            new = candidate
            if STATUS in kind.subresources:
                new.pop(STATUS, None)
                if STATUS in old:
                    new[STATUS] = copy.deepcopy(old[STATUS])
            new_meta = new.setdefault("metadata", {})
            if old["metadata"].get("deletionTimestamp") and (
                set(new_meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            ):
                raise ApiError(422, "Invalid", "no new finalizers can be added while deleting")
        meta = new.setdefault("metadata", {})
        for field in ("uid", "name", "namespace", "creationTimestamp", "deletionTimestamp"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = current_rv
        meta["generation"] = old["metadata"].get("generation", 1)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        self._admit(kind, new, old)
        if new == old:
            return old
        if {k: v for k, v in new.items() if k not in ("metadata", STATUS)} != {
            k: v for k, v in old.items() if k not in ("metadata", STATUS)
        }:
            meta["generation"] += 1
        meta["resourceVersion"] = self._next_rv()
        self._store[self._key(kind, namespace, name)] = new
        self._emit(kind.rid, "MODIFIED", new, old)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(kind, namespace, name, orphan=False)
        return new

    def _delete(self, kind: Kind, namespace: str | None, name: str, orphan: bool) -> dict[str, Any]:
        old = self._get(kind, namespace, name)
        if not old["metadata"].get("finalizers"):
            return self._remove(kind, namespace, name, orphan)
        if old["metadata"].get("deletionTimestamp"):
            return old
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._store[self._key(kind, namespace, name)] = new
        self._emit(kind.rid, "MODIFIED", new, old)
        return new

    def _remove(self, kind: Kind, namespace: str | None, name: str, orphan: bool) -> dict[str, Any]:
        obj = self._store.pop(self._key(kind, namespace, name))
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(kind.rid, "DELETED", gone, obj)
        if not orphan:
            self._collect_garbage()
        return gone

    def _collect_garbage(self) -> None:
        """Delete dependents all of whose owners are gone (background cascading deletion)."""
        uids = {obj["metadata"]["uid"] for obj in self._store.values()}
        for (rid, namespace, name), obj in list(self._store.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if owners and not any(o.get("uid") in uids for o in owners):
                if (rid, namespace, name) in self._store:
                    self._delete(self._kinds[rid], namespace or None, name, orphan=False)

    # -- reading --

    def _matcher(self, request: kmock.Request, namespace: str | None) -> Any:
        labels = label_matcher(request.params.get("labelSelector"))
        fields = field_matcher(request.params.get("fieldSelector"))
        name = request.name

        def matches(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            meta = obj["metadata"]
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and labels(meta.get("labels"))
                and fields(obj)
            )

        return matches

    def _list(self, request: kmock.Request, kind: Kind, namespace: str | None) -> dict[str, Any]:
        matches = self._matcher(request, namespace)
        items = [
            obj
            for (rid, _, _), obj in sorted(self._store.items())
            if rid == kind.rid and matches(obj)
        ]
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self._last_rv)},
            "items": items,
        }

    async def _watch(
        self, request: kmock.Request, kind: Kind, namespace: str | None
    ) -> aiohttp.web.StreamResponse:
        matches = self._matcher(request, namespace)
        since = request.params.get("resourceVersion") or "0"
        timeout = min(float(request.params.get("timeoutSeconds") or 1e9), self.max_watch_seconds)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        initial: list[tuple[str, dict[str, Any]]] = []
        if since == "0":
            objs = [obj for (rid, _, _), obj in sorted(self._store.items()) if rid == kind.rid]
            initial = [("ADDED", obj) for obj in objs if matches(obj)]
        elif (
            self._history
            and len(self._history) == self._history.maxlen
            and (int(since) < self._history[0].rv - 1)
        ):
            gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410}
            gone.update(reason="Expired", message="too old resource version")
            initial = [("ERROR", gone)]
        else:
            events = [e for e in self._history if e.rv > int(since) and e.rid == kind.rid]
            initial = [t for e in events if (t := self._translate(e, matches))]
        self._watchers.add(queue)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request._raw_request)
            for type_, obj in initial:
                await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
            if initial and initial[0][0] == "ERROR":
                return response
            deadline = asyncio.get_running_loop().time() + timeout
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), min(left, 1.0))
                except TimeoutError:
                    transport = request._raw_request.transport
                    if transport is None or transport.is_closing():
                        break
                    continue
                if event is None:
                    break
                if event.rid == kind.rid and (item := self._translate(event, matches)):
                    line = json.dumps({"type": item[0], "object": item[1]})
                    await response.write(line.encode() + b"\n")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._watchers.discard(queue)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    @staticmethod
    def _translate(event: Event, matches: Any) -> tuple[str, dict[str, Any]] | None:
        """The event as a selective watch sees it: objects entering or leaving the selection."""
        now, before = matches(event.obj), matches(event.old)
        if event.type == "MODIFIED" and now != before:
            return ("ADDED" if now else "DELETED"), event.obj
        if now or (event.type == "DELETED" and before):
            return event.type, event.obj
        return None


class RunningEmulator:
    """A ``KubeEmulator`` served on 127.0.0.1 from a background thread with its own loop."""

    def __init__(self, emulator: KubeEmulator | None = None, host: str = "127.0.0.1") -> None:
        self.emulator = emulator if emulator is not None else KubeEmulator()  # kmock is falsy
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the emulator's loop (its state is not thread-safe) and return."""

        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.emulator:
            server = aiohttp.web.Server(self.emulator)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, self.host, 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._started.set()
            await self._stop.wait()
            self.emulator.close_watches()
            await runner.cleanup()

    def start(self) -> RunningEmulator:
        """Start serving; returns when the port accepts connections."""
        self._thread.start()
        if not self._started.wait(timeout=10) or self._error:
            raise RuntimeError(f"the emulator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
