"""A Kubernetes API emulator for tests: kmock 0.8 (pinned) plus what kopf and we need.

``kmock.KubernetesScaffold`` gives the HTTP plumbing, URL parsing and discovery of the
built-in kinds. On top of it, ``KubeEmulator`` keeps objects the way an API server does, and
is as strict as one where our code depends on it (``tests/support/README.md`` has the whole
list, and what it still does not do):

- authentication by bearer token (``ADMIN_TOKEN``, ``issue_token`` for ServiceAccounts,
  anonymous without one) and RBAC authorization of every request against the stored Roles,
  ClusterRoles and bindings (``rbac.py``; the chart's, through ``load_manifests``); 401/403
  with the real ``Status`` bodies;
- ``uid``, ``resourceVersion``, ``generation``, ``creationTimestamp``; ``generateName``; 201 on
  POST; 409 on an existing name, a stale ``resourceVersion`` or a failed delete precondition;
  422 on a failed JSON-patch test;
- merge and JSON patches and PUT everywhere; strategic-merge patches on built-in kinds (as a
  merge patch), 415 on custom resources as the real server; the ``status`` subresource isolated
  from the main resource; lists with ``kind`` and ``resourceVersion`` (``resourceVersionMatch``
  ``Exact`` served from history, 410 when compacted); label and field selectors;
  ``deletecollection``;
- watches that resume from ``?resourceVersion`` out of a bounded per-resource history (410
  ``Expired`` as an ERROR event when older), ``allowWatchBookmarks`` (BOOKMARK events every
  ``bookmark_interval`` s), ``timeoutSeconds``; test controls to end or abort every watch
  (``drop_watches``) and to compact the history (``compact``);
- finalizers and ``deletionTimestamp``; graceful deletion of scheduled pods (they stay
  Terminating until their kubelet deletes them with ``gracePeriodSeconds=0``); pod binding;
  owner-reference garbage collection (background);
- CRDs registered from their manifests (or by POSTing them), with schema defaulting, pruning,
  validation and our CEL rules (``crd_schema``); an invalid object gets 422 with the reasons;
- fault injection for chaos tests (``inject``): the next N matching requests answer 409 or
  500, or never answer, optionally after the write was applied.

Not emulated: admission webhooks, server-side apply, scheduling and controllers (the fake
kubelet in ``kubelet.py`` plays the Deployment controller, scheduler and kubelet).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import datetime as dt
import itertools
import json
import pathlib
import random
import re
import secrets
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

from . import crd_schema, rbac
from .rbac import Attributes, User

CRD_DIR = pathlib.Path(__file__).resolve().parents[2] / "crds"
CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
PODS = "/v1/pods"
SERVICE_ACCOUNTS = "/v1/serviceaccounts"
STATUS = "status"
ADMIN_TOKEN = "emulator-admin-token"  # a test credential of a system:masters user
ADMIN = User("emulator-admin", (rbac.MASTERS, rbac.AUTHENTICATED))
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STRATEGIC = "application/strategic-merge-patch+json"


def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
    """A JSON answer with the real server's ``Content-Type: application/json`` (aiohttp's
    ``json_response`` adds ``; charset=utf-8``, which lightkube does not take for an API error)."""
    return aiohttp.web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


class ApiError(Exception):
    """An API failure, rendered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        """The ``Status`` object (``details`` only when there are some, as the real server)."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            body["details"] = self.details
        body["code"] = self.code
        return body

    def response(self) -> aiohttp.web.Response:
        return _json(self.status(), status=self.code)


@dataclasses.dataclass
class Kind:
    """One served resource: identity, scope, and the CRD schema if it is a custom one."""

    rid: str  # group/version/plural, group empty for the core API
    api_version: str
    kind: str
    namespaced: bool
    subresources: set[str]
    schema: dict[str, Any] | None = None

    @property
    def group(self) -> str:
        return self.rid.split("/")[0]

    @property
    def plural(self) -> str:
        return self.rid.split("/")[2]

    @property
    def qualified(self) -> str:
        """``plural.group`` (``plural`` for the core API), as messages name a resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    rid: str
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclasses.dataclass
class Fault:
    """An injected failure for the next ``count`` matching requests (see ``inject``)."""

    action: str  # "conflict" (409), "error" (500) or "hang" (no answer until the client leaves)
    count: int
    methods: frozenset[str]
    resource: str | None  # plural or plural/subresource; None: any
    name: str | None
    after: bool  # error/hang only: apply the request first, then fail (the write happened)
    user: str | None = None  # the requester's user name; None: anyone
    hits: int = 0

    def matches(self, method: str, attrs: Attributes) -> bool:
        combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        return (
            self.hits < self.count
            and method in self.methods
            and self.resource in (None, combined)
            and self.name in (None, attrs.name or None)
            and self.user in (None, attrs.user.name)
        )


class _End:
    """What a watch's queue gets to end it: cleanly, or by dropping the connection."""

    def __init__(self, abort: bool) -> None:
        self.abort = abort


def _now(offset: float = 0) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


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
    """An in-memory Kubernetes API server good enough for kopf, the official client and us.

    ``rbac``: authorize every request (False: allow every authenticated or anonymous one);
    ``denials`` keeps the messages of the last 1000 refusals, ``users`` counts requests by
    user name.
    ``history_size``: events kept per resource for watches to resume from (older: 410).
    ``bookmark_interval``: seconds between BOOKMARK events on watches that allow them.
    """

    rbac: bool = True
    history_size: int = 50_000
    bookmark_interval: float = 60.0
    max_watch_seconds: float = 300.0
    _kinds: dict[str, Kind] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[str, str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _history: dict[str, deque[Event]] = attrs.field(factory=dict, init=False)
    _floor: dict[str, int] = attrs.field(factory=dict, init=False)
    _watchers: dict[asyncio.Queue[Event | _End], str] = attrs.field(factory=dict, init=False)
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _tokens: dict[str, tuple[User, tuple[str, str] | None]] = attrs.field(factory=dict, init=False)
    _policy: rbac.Policy | None = attrs.field(default=None, init=False)
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    denials: deque[str] = attrs.field(factory=lambda: deque(maxlen=1000), init=False)
    users: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
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
        self._tokens[ADMIN_TOKEN] = (ADMIN, None)
        self.load_manifests(rbac.bootstrap_policy())

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

    def load_manifests(self, manifests: list[dict[str, Any]], namespace: str = "") -> None:
        """Create manifests (e.g. a chart's rendered RBAC) as an administrator would apply them.

        Namespaced objects without a namespace go to ``namespace``; served kinds only.
        """
        by_kind = {(k.api_version, k.kind): k for k in self._kinds.values()}
        for doc in manifests:
            kind = by_kind.get((doc.get("apiVersion"), doc.get("kind")))
            if kind is None:
                raise ValueError(f"{doc.get('apiVersion')}/{doc.get('kind')} is not served")
            doc = copy.deepcopy(doc)
            target = (doc["metadata"].get("namespace") or namespace) if kind.namespaced else None
            if kind.namespaced and not target:
                raise ValueError(f"{kind.kind} {doc['metadata']['name']} needs a namespace")
            self._create(kind, target, doc)

    def issue_token(self, namespace: str, service_account: str) -> str:
        """A bearer token of a ServiceAccount (valid while the ServiceAccount exists)."""
        token = f"sa.{namespace}.{service_account}.{secrets.token_hex(8)}"
        user = rbac.service_account_user(namespace, service_account)
        self._tokens[token] = (user, (namespace, service_account))
        return token

    def add_token(self, token: str, user: User) -> None:
        """Accept ``token`` as ``user`` (e.g. ``User("alice", ("system:authenticated",))``)."""
        self._tokens[token] = (user, None)

    def objects(self, rid: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Snapshot of stored objects of ``rid`` (e.g. ``apps/v1/deployments``)."""
        rid = rid if rid.count("/") == 2 else f"/{rid}"
        return [
            copy.deepcopy(obj)
            for (r, ns, _), obj in self._store.items()
            if r == rid and (namespace is None or ns == namespace)
        ]

    # -- test controls (chaos) --

    def _rids(self, resource: str | None) -> list[str]:
        return [rid for rid in self._kinds if resource is None or rid.endswith(f"/{resource}")]

    def drop_watches(self, resource: str | None = None, abort: bool = False) -> int:
        """End every open watch (of ``resource``, a plural); ``abort`` cuts the connection
        instead of ending the response. Returns how many were ended."""
        rids = set(self._rids(resource))
        ended = 0
        for queue, rid in list(self._watchers.items()):
            if rid in rids:
                queue.put_nowait(_End(abort))
                ended += 1
        return ended

    def compact(self, resource: str | None = None) -> None:
        """Forget the event history (of ``resource``): resuming from any version older than
        the current one then gets 410 Expired, as after an etcd compaction."""
        for rid in self._rids(resource):
            self._history.pop(rid, None)
            self._floor[rid] = self._last_rv

    def inject(
        self,
        action: str,
        count: int = 1,
        *,
        methods: set[str] | frozenset[str] = WRITES,
        resource: str | None = None,
        name: str | None = None,
        user: str | None = None,
        after: bool = False,
    ) -> Fault:
        """Fail the next ``count`` matching requests (authorized ones; not watches).

        ``action``: ``"conflict"`` answers 409 Conflict, ``"error"`` 500 InternalError,
        ``"hang"`` never answers (until the client gives up or the emulator stops).
        ``methods`` (HTTP, default the writes), ``resource`` (``plural`` or
        ``plural/subresource``), ``name`` and ``user`` (e.g.
        ``system:serviceaccount:NS:SA``) filter the requests. ``after``: the request is
        applied first (the write happened, the client does not know it). The returned
        ``Fault`` counts its ``hits``.
        """
        if action not in ("conflict", "error", "hang"):
            raise ValueError(f"unknown fault {action!r}")
        if after and action == "conflict":
            raise ValueError("a conflict is never applied")
        methods = frozenset(m.upper() for m in methods)
        fault = Fault(action, count, methods, resource, name, after, user)
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault still pending."""
        self._faults.clear()

    def close_watches(self) -> None:
        """End every open watch stream and hung request (at shutdown)."""
        self._closing = True
        for queue in self._watchers:
            queue.put_nowait(_End(False))

    # -- authentication and authorization --

    def _authenticate(self, request: kmock.Request) -> User:
        header = _header(request, "Authorization")
        if not header:
            return rbac.ANONYMOUS_USER
        scheme, _, token = header.strip().partition(" ")
        entry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is not None and entry[1] is not None:
            namespace, name = entry[1]
            if (SERVICE_ACCOUNTS, namespace, name) not in self._store:
                entry = None  # a deleted ServiceAccount's tokens are invalid
        if entry is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return entry[0]

    def _attributes(self, request: kmock.Request, user: User) -> Attributes:
        resource = request.resource
        method = request.method.value
        if resource is None or not resource.plural or not resource.version:
            return Attributes(user, method.lower(), False, path=request.url.path)
        watch = request.params.get("watch") in ("true", "1")
        verb = rbac.request_verb(method, named=bool(request.name), watch=watch)
        name = request.name or ""
        if verb in ("list", "watch") and not name:
            selector = request.params.get("fieldSelector") or ""
            match = re.fullmatch(r"\s*metadata\.name\s*==?\s*([^,!=\s]+)\s*", selector)
            name = match[1] if match else ""
        return Attributes(
            user,
            verb,
            api_group=resource.group or "",
            resource=resource.plural,
            subresource=request.subresource or "",
            name=name,
            namespace=request.namespace or "",
            path=request.url.path,
        )

    def _authorize(self, attrs: Attributes) -> None:
        if not self.rbac:
            return
        if self._policy is None:
            rbac_objects = [o for (rid, _, _), o in self._store.items() if rid.startswith(_RBAC)]
            self._policy = rbac.Policy.of(rbac_objects)
        if not self._policy.allows(attrs):
            message, details = rbac.forbidden(attrs)
            self.denials.append(message)
            raise ApiError(403, "Forbidden", message, **details)

    # -- request dispatch --

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if len(self._requests) > 1000:  # kmock keeps every request; tests do not need them
            del self._requests[:-100]
        try:
            attrs = self._attributes(request, self._authenticate(request))
            self.users[attrs.user.name] += 1
            self._authorize(attrs)
            if not attrs.resource_request:
                return await super()._handle(request)
            resource = request.resource
            kind = self._kinds.get(_rid(resource))
            if kind is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            fault = None
            if attrs.verb != "watch":
                method = request.method.value
                fault = next(
                    (f for f in self._faults if f.matches(method, attrs)),
                    None,
                )
            if fault is not None:
                fault.hits += 1
                self._faults = [f for f in self._faults if f.hits < f.count]
                if not fault.after:
                    return await self._fail(fault, request, kind)
            response = await self._serve(request, kind)
            if fault is not None:
                return await self._fail(fault, request, kind)
            return response
        except ApiError as exc:
            return exc.response()

    async def _fail(
        self, fault: Fault, request: kmock.Request, kind: Kind
    ) -> aiohttp.web.StreamResponse:
        if fault.action == "hang":
            while not self._closing:
                transport = request._raw_request.transport
                if transport is None or transport.is_closing():
                    break
                await asyncio.sleep(0.05)
            return aiohttp.web.Response(status=504)
        if fault.action == "conflict":
            name = request.name or (request.data or {}).get("metadata", {}).get("name", "")
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                **_details(kind, name),
            )
        raise ApiError(
            500,
            "InternalError",
            "Internal error occurred: injected fault",
            causes=[{"message": "injected fault"}],
        )

    async def _serve(self, request: kmock.Request, kind: Kind) -> aiohttp.web.StreamResponse:
        method, name, sub = request.method.value, request.name, request.subresource
        namespace = request.namespace if kind.namespaced else None
        if sub and sub not in kind.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub and sub not in (STATUS, "binding"):
            raise ApiError(405, "MethodNotAllowed", f"{kind.plural}/{sub} is not emulated")
        if method == "GET" and request.params.get("watch") in ("true", "1"):
            return await self._watch(request, kind, namespace)
        if method == "GET" and name:
            return _json(self._get(kind, namespace, name))
        if method == "GET":
            return _json(self._list(request, kind, namespace))
        if method == "POST" and name and sub == "binding" and kind.rid == PODS:
            return _json(self._bind(namespace, name, request.data), status=201)
        if method == "POST" and not name:
            created = self._create(kind, namespace, request.data)
            return _json(created, status=201)
        if method in ("PATCH", "PUT") and name:
            content_type = (_header(request, "Content-Type") or "").split(";")[0].strip()
            updated = self._update(kind, namespace, name, sub, method, content_type, request.data)
            return _json(updated)
        if method == "DELETE" and name and not sub:
            options = _delete_options(request)
            return _json(self._delete(kind, namespace, name, options))
        if method == "DELETE" and not name:
            return _json(self._delete_collection(request, kind, namespace))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    # -- storage --

    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (kind.rid, namespace or "", name)

    def _get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._store.get(self._key(kind, namespace, name))
        if obj is None:
            raise ApiError(
                404, "NotFound", f'{kind.qualified} "{name}" not found', **_details(kind, name)
            )
        return obj

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _emit(self, rid: str, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), rid, type_, obj, old)
        history = self._history.setdefault(rid, deque(maxlen=self.history_size))
        if len(history) == history.maxlen:
            self._floor[rid] = history[0].rv  # resuming from before it would miss it
        history.append(event)
        if rid.startswith(_RBAC):
            self._policy = None
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
            raise ApiError(
                409,
                "AlreadyExists",
                f'{kind.qualified} "{meta["name"]}" already exists',
                **_details(kind, meta["name"]),
            )
        if STATUS in kind.subresources:
            obj.pop(STATUS, None)
        self._admit(kind, obj, None)
        created = self._insert(kind, namespace, obj)
        if kind.rid == CRD_RESOURCE:
            self.register_crd(created)
        return created

    def _conflict(self, kind: Kind, name: str) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            **_details(kind, name),
        )

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
                raise self._conflict(kind, name)
        if method == "PUT":
            candidate = copy.deepcopy(body)
        elif content_type == "application/json-patch+json":
            try:
                candidate = json_patch(old, body if isinstance(body, list) else [])
            except ValueError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
        elif content_type == "application/merge-patch+json" or (
            content_type == STRATEGIC and kind.schema is None
        ):
            candidate = merge_patch(old, body)  # strategic merge of built-ins: as a merge
        else:
            accepted = "application/json-patch+json, application/merge-patch+json"
            if kind.schema is None:
                accepted += f", {STRATEGIC}"
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                f"include: {accepted}, application/apply-patch+yaml",
            )

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
        kept = ("uid", "name", "namespace", "creationTimestamp", "deletionTimestamp")
        for field in (*kept, "deletionGracePeriodSeconds"):
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
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not _graceful(new):
            self._remove(kind, namespace, name, orphan=False)
        return new

    def _bind(self, namespace: str | None, name: str, body: Any) -> dict[str, Any]:
        """``POST pods/NAME/binding``: assign the pod to a node, as the scheduler does."""
        kind = self._kinds[PODS]
        old = self._get(kind, namespace, name)
        node = ((body or {}).get("target") or {}).get("name")
        if not node:
            raise ApiError(422, "Invalid", "target.name: Required value")
        if old["spec"].get("nodeName"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is already '
                f'assigned to node "{old["spec"]["nodeName"]}"',
            )
        new = copy.deepcopy(old)
        new["spec"]["nodeName"] = node
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._store[self._key(kind, namespace, name)] = new
        self._emit(kind.rid, "MODIFIED", new, old)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def _delete(
        self, kind: Kind, namespace: str | None, name: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        old = self._get(kind, namespace, name)
        preconditions = options.get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            wanted = preconditions.get(field)
            if wanted and wanted != old["metadata"][field]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: {field.replace('uid', 'UID')} in precondition: "
                    f"{wanted}, {field.replace('uid', 'UID')} in object meta: "
                    f"{old['metadata'][field]}",
                    **_details(kind, name),
                )
        orphan = options.get("propagationPolicy") == "Orphan"
        grace = self._grace(kind, old, options)
        meta = old["metadata"]
        if meta.get("deletionTimestamp"):
            # Already deleting: only a pod's grace period can still be shortened.
            if grace >= meta.get("deletionGracePeriodSeconds", 0):
                return old
            if not grace and not meta.get("finalizers"):
                return self._remove(kind, namespace, name, orphan)
        elif not grace and not meta.get("finalizers"):
            return self._remove(kind, namespace, name, orphan)
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = _now(grace)
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._store[self._key(kind, namespace, name)] = new
        self._emit(kind.rid, "MODIFIED", new, old)
        return new

    @staticmethod
    def _grace(kind: Kind, obj: dict[str, Any], options: dict[str, Any]) -> int:
        """Seconds of graceful deletion: only scheduled, unfinished pods have them."""
        if kind.rid != PODS or not obj["spec"].get("nodeName"):
            return 0
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
        return max(int(grace), 0)

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
                current = self._store.get((rid, namespace, name))
                if current is not None and not current["metadata"].get("deletionTimestamp"):
                    self._delete(self._kinds[rid], namespace or None, name, {})

    def _delete_collection(
        self, request: kmock.Request, kind: Kind, namespace: str | None
    ) -> dict[str, Any]:
        listing = self._list(request, kind, namespace)
        options = _delete_options(request)
        for obj in listing["items"]:
            meta = obj["metadata"]
            if self._key(kind, meta.get("namespace"), meta["name"]) in self._store:
                self._delete(kind, meta.get("namespace"), meta["name"], options)
        return listing

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

    def _version(self, request: kmock.Request) -> int | None:
        since = request.params.get("resourceVersion") or "0"
        if not since.isdigit():
            raise ApiError(400, "BadRequest", f'invalid resource version "{since}"')
        return int(since) or None

    def _list(self, request: kmock.Request, kind: Kind, namespace: str | None) -> dict[str, Any]:
        matches = self._matcher(request, namespace)
        objects = {
            (ns, name): obj for (rid, ns, name), obj in self._store.items() if rid == kind.rid
        }
        version, rv = self._version(request), str(self._last_rv)
        match = request.params.get("resourceVersionMatch")
        if match and not request.params.get("resourceVersion"):
            message = (
                "resourceVersionMatch: Forbidden: resourceVersionMatch requires resourceVersion"
            )
            raise ApiError(422, "Invalid", message)
        if version is not None and version > self._last_rv:
            raise ApiError(
                504,
                "Timeout",
                f"Too large resource version: {version}, current: {self._last_rv}",
                causes=[{"reason": "ResourceVersionTooLarge", "message": "Too large rv"}],
                retryAfterSeconds=1,
            )
        if match == "Exact" and version is not None:
            if version < self._floor.get(kind.rid, 0):
                raise ApiError(
                    410, "Expired", "The resourceVersion for the provided list is too old."
                )
            for event in reversed(self._history.get(kind.rid, ())):
                if event.rv <= version:
                    break
                meta = event.obj["metadata"]
                key = (meta.get("namespace") or "", meta["name"])
                if event.type == "ADDED":
                    objects.pop(key, None)
                else:
                    objects[key] = event.old or event.obj
            rv = str(version)
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": rv},
            "items": [obj for _, obj in sorted(objects.items()) if matches(obj)],
        }

    async def _watch(
        self, request: kmock.Request, kind: Kind, namespace: str | None
    ) -> aiohttp.web.StreamResponse:
        matches = self._matcher(request, namespace)
        since = self._version(request)
        timeout = min(float(request.params.get("timeoutSeconds") or 1e9), self.max_watch_seconds)
        bookmarks = request.params.get("allowWatchBookmarks") in ("true", "1")
        queue: asyncio.Queue[Event | _End] = asyncio.Queue()
        initial: list[tuple[str, dict[str, Any]]] = []
        floor = self._floor.get(kind.rid, 0)
        if since is None:
            objs = [obj for (rid, _, _), obj in sorted(self._store.items()) if rid == kind.rid]
            initial = [("ADDED", obj) for obj in objs if matches(obj)]
        elif since < floor:
            gone = ApiError(410, "Expired", f"too old resource version: {since} ({floor})")
            initial = [("ERROR", gone.status())]
        else:
            events = [e for e in self._history.get(kind.rid, ()) if e.rv > since]
            initial = [t for e in events if (t := self._translate(e, matches))]
        self._watchers[queue] = kind.rid
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        raw = request._raw_request
        try:
            await response.prepare(raw)
            for type_, obj in initial:
                await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
            if initial and initial[0][0] == "ERROR":
                return response
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while (left := deadline - loop.time()) > 0:
                if bookmarks and queue.empty() and loop.time() >= next_bookmark:
                    mark = {"kind": kind.kind, "apiVersion": kind.api_version}
                    mark["metadata"] = {"resourceVersion": str(self._last_rv)}
                    line = json.dumps({"type": "BOOKMARK", "object": mark})
                    await response.write(line.encode() + b"\n")
                    next_bookmark = loop.time() + self.bookmark_interval
                wait = min(left, 1.0)
                if bookmarks:
                    wait = max(0.0, min(wait, next_bookmark - loop.time()))
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if raw.transport is None or raw.transport.is_closing():
                        break
                    continue
                if isinstance(event, _End):
                    if event.abort and raw.transport is not None:
                        raw.transport.abort()
                        return response
                    break
                if event.rid == kind.rid and (item := self._translate(event, matches)):
                    line = json.dumps({"type": item[0], "object": item[1]})
                    await response.write(line.encode() + b"\n")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._watchers.pop(queue, None)
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


_RBAC = f"{rbac.RBAC_GROUP}/"


def _header(request: kmock.Request, name: str) -> str | None:
    """A request header, by case-insensitive name."""
    raw = request._raw_request
    if raw is not None:
        return raw.headers.get(name)
    return next((v for k, v in request.headers.items() if k.lower() == name.lower()), None)


def _details(kind: Kind, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if kind.group:
        details["group"] = kind.group
    details["kind"] = kind.plural
    return details


def _delete_options(request: kmock.Request) -> dict[str, Any]:
    """DeleteOptions from the body and the query (the query wins, as the real server)."""
    options = dict(request.data) if isinstance(request.data, dict) else {}
    for key in ("gracePeriodSeconds", "propagationPolicy"):
        if key in request.params:
            options[key] = request.params[key]
    return options


def _graceful(obj: dict[str, Any]) -> bool:
    """A pod still in its termination grace period (its kubelet deletes it when done)."""
    return bool(obj["metadata"].get("deletionGracePeriodSeconds"))


class RunningEmulator:
    """A ``KubeEmulator`` served on 127.0.0.1 from a background thread with its own loop.

    ``tokens`` maps component names to bearer tokens (the fixtures fill it from the chart).
    The chaos controls run on the emulator's loop: ``inject``, ``clear_faults``,
    ``drop_watches``, ``compact``.
    """

    def __init__(self, emulator: KubeEmulator | None = None, host: str = "127.0.0.1") -> None:
        self.emulator = emulator if emulator is not None else KubeEmulator()  # kmock is falsy
        self.host = host
        self.port = 0
        self.tokens: dict[str, str] = {"admin": ADMIN_TOKEN}
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the emulator's loop (its state is not thread-safe)."""

        async def call() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def read(self, fn: Any) -> Any:
        """``call(fn)`` while serving; after ``stop``, ``fn()`` directly."""
        return self.call(fn) if self._thread.is_alive() else fn()

    def inject(self, action: str, count: int = 1, **filters: Any) -> Fault:
        """``KubeEmulator.inject`` on the emulator's loop."""
        return self.call(self.emulator.inject, action, count, **filters)

    def clear_faults(self) -> None:
        self.call(self.emulator.clear_faults)

    def drop_watches(self, resource: str | None = None, abort: bool = False) -> int:
        """``KubeEmulator.drop_watches`` on the emulator's loop."""
        return self.call(self.emulator.drop_watches, resource, abort)

    def compact(self, resource: str | None = None) -> None:
        """``KubeEmulator.compact`` on the emulator's loop."""
        self.call(self.emulator.compact, resource)

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
