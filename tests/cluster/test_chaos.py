"""The chaos tier (issue 10): the real operator and two gateway replicas in kubernetes mode keep
their promises while the API emulator misbehaves and engine pods come and go.

Two client threads create sessions and talk through both replicas, in rounds. Between the
first and the last operations of each round the test applies one perturbation, in an order
shuffled by a seeded ``random.Random``: watches dropped (cleanly or cut), 410 Gone forced
(history compacted, watches ended), writes (and some reads) of the operator or the gateways
answered 409, 500 or never (before or after they were applied), a session deleted and a pod
deleted while the gateways' or the operator's watch is down, and engine pods deleted (the fake
kubelet's ReplicaSet replaces them). Then, with the faults cleared, within deadlines:

- every live TutorSession is Active on a pod that exists and is not terminating, and its status
  endpoint is that pod's address;
- no session deleted during the run is visible to either gateway (GET 404, not listed), and both
  list exactly the API's sessions;
- one Deployment, one Service (and at most one PDB) per TutorEngine, no more live pods than its
  replicas, and its status counts the ready pods that exist;
- no session a client kept using was lost to a scale-down: it only ever left pods the test
  deleted, it never forgot its conversation (the engines keep history in a real redis-server,
  so a move to another pod continues it), and it still answers on both replicas;
- the operator process and both gateways stayed up.

Everything waits on conditions with deadlines; nothing depends on how fast the machine is.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import itertools
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tutor_contract.crd import READY_ENDPOINTS
from tutor_operator import names
from websockets.exceptions import ConnectionClosed, WebSocketException

from tests.gateway.helpers import open_ws
from tests.servers import RunningServer
from tests.support.chart_rbac import chart_rbac
from tests.support.cluster import NAMESPACE, KubeClient, OperatorProcess
from tests.support.kube_emulator import RunningEmulator
from tests.support.redis_server import RedisServer

from .test_gateway_cluster import cluster_gateway
from .test_gateway_watch import FAST

pytestmark = pytest.mark.timeout(120)

SEED = 1010
TUTORS = (1, 2)  # one per client thread; at most 2 replicas of 4 sessions each (test defaults)
KEPT = 3  # sessions each client keeps using to the end
FILL = 4  # short-lived sessions each client starts with: they fill its engine's first pod
EPHEMERAL = 3  # then at most this many short-lived sessions per client at once
WARM_UP = FILL + 2  # operations before the first perturbation: FILL sessions, two kept ones
OPS_PER_ROUND = 4  # operations of each client per round
# One of each perturbation at least, shuffled by the seed; a fixed number of rounds.
PERTURBATIONS = [
    "drop",
    "drop",
    "gone",
    "gone",
    "blind_gateway",
    "blind_operator",
    "conflict",
    "conflict",
    "error",
    "error",
    "hang",
    "hang",
    "kill_pod",
    "kill_pod",
]
WATCHED = ["tutorsessions", "tutorengines", "pods", "deployments", None]
GATEWAY_RESOURCES = ["tutorsessions", "tutorsessions/status", None]
OPERATOR_RESOURCES = [
    "tutorsessions",
    "tutorsessions/status",
    "tutorengines",
    "tutorengines/status",
    "deployments",
    "pods",
    "services",
    None,
]
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
MAX_TURN = 20  # the engine keeps 40 messages: turn numbers stop growing there
CLIENT_ERRORS = (WebSocketException, TimeoutError, OSError, httpx.HTTPError)
# Quick recovery, bounded waits: API calls give up after 2-3 s.
GATEWAY_SETTINGS = {**FAST, "max_sessions": 100, "engine_start_timeout_seconds": 20}
OPERATOR_SETTINGS = {"TUTOR_OPERATOR_RESYNC_INTERVAL": "2", "TUTOR_OPERATOR_API_TIMEOUT": "3"}
HISTORY_SECRET = "tutor-history"  # the history store's password, key "password"
REPLY_SECONDS = 30  # > engine_start_timeout_seconds: the gateway answers or closes first


def eventually(check: Callable[[], list[str]], timeout: float, what: str) -> None:
    """Poll ``check`` (the problems left) until it returns none; fail with the last ones."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems:
            return
        if time.monotonic() > deadline:
            shown = "\n  ".join(problems[:20])
            raise AssertionError(f"after {timeout}s, {what}:\n  {shown}")
        time.sleep(0.2)


@dataclasses.dataclass
class Turn:
    number: int  # "This is turn N": how much of the conversation the engine remembers
    gone_before: int  # pods the test deleted that were gone when the message was sent
    killed_after: int  # pods the test had started to delete when the reply came


@dataclasses.dataclass
class Conversation:
    body: dict[str, Any]  # the 201 of POST /v1/sessions
    tutor: int
    kept: bool
    turns: list[Turn] = dataclasses.field(default_factory=list)
    pods: list[str] = dataclasses.field(default_factory=list)  # pods its status named, in order
    version: int = 0  # resourceVersion of the newest status read (readers race)

    @property
    def sid(self) -> str:
        return self.body["session_id"]

    def saw(self, obj: dict[str, Any] | None) -> None:
        """Note the pod ``obj`` (this TutorSession, as read) names, unless already newer read."""
        if obj is None:
            return
        version, pod = int(obj["metadata"]["resourceVersion"]), (obj.get("status") or {}).get("pod")
        with SAW:
            if version <= self.version:
                return
            self.version = version
            if pod and (not self.pods or self.pods[-1] != pod):
                self.pods.append(pod)


SAW = threading.Lock()


class Chaos:
    """What the clients and the perturbations share."""

    def __init__(self, gateways: list[RunningServer], api: RunningEmulator) -> None:
        self.gateways, self.api = gateways, api
        self.lock = threading.Condition()
        self.stop = threading.Event()
        self.allowed = 0  # operations each client may have done so far (the rounds)
        self.done: list[int] = [0] * len(TUTORS)
        self.errors: list[str] = []  # unexpected: fail the test
        self.kills = 0  # pods the test deleted (started to)
        self.gone = 0  # ... of which it has seen the end (gone from the API)
        self.killed: set[str] = set()
        self.dying: set[str] = set()  # killed, not seen gone yet
        self.deleted: set[str] = set()  # acknowledged deletions
        self.conversations: dict[str, Conversation] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.pods_seen: set[str] = set()
        self.students = itertools.count(1)  # a student per session: limits are not tested here

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def kill(self, kube: KubeClient, pod: str) -> None:
        with self.lock:
            self.kills += 1
            self.killed.add(pod)
            self.dying.add(pod)
        response = kube.delete("pods", pod)
        assert response.status_code in (200, 404), response.text

    def observe(self, kube: KubeClient) -> None:
        """Note each known session's pod (as its status names it) and killed pods now gone."""
        for pod in sorted(self.dying):
            if kube.get("pods", pod) is None:
                with self.lock:
                    self.dying.discard(pod)
                    self.gone += 1
        self.pods_seen.update(p["metadata"]["name"] for p in engine_pods(kube))
        for obj in kube.list("tutorsessions"):
            conversation = self.conversations.get(obj["metadata"]["name"])
            if conversation is not None:
                conversation.saw(obj)


# -- client operations (failures that chaos explains are counted, not raised) --


def create(chaos: Chaos, gateway: RunningServer, tutor: int, kept: bool) -> Conversation | None:
    try:
        response = httpx.post(
            f"{gateway.http}/v1/sessions",
            json={"tutor_id": tutor, "student_id": next(chaos.students)},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        chaos.count(f"create: {type(exc).__name__}")
        return None
    if response.status_code == 503:
        chaos.count("create: 503")
        return None
    assert response.status_code == 201, response.text
    conversation = Conversation(response.json(), tutor, kept)
    with chaos.lock:
        chaos.conversations[conversation.sid] = conversation
    return conversation


def talk(chaos: Chaos, gateway: RunningServer, conversation: Conversation, text: str) -> bool:
    """One message and its reply over a fresh WebSocket; the turn is recorded."""
    before = chaos.gone
    try:
        with open_ws(gateway, conversation.body) as ws:
            ws.send(json.dumps({"type": "text", "content": text}))
            reply = json.loads(ws.recv(timeout=REPLY_SECONDS))
    except CLIENT_ERRORS as exc:
        code = getattr(getattr(exc, "rcvd", None), "code", "")
        chaos.count(f"talk: {type(exc).__name__} {code}".strip())
        return False
    if reply.get("type") != "text":
        chaos.count(f"talk: {reply.get('type')} frame")
        return False
    found = re.search(r"This is turn (\d+),", reply["content"])
    assert found and f"heard: {text}" in reply["content"], reply
    conversation.turns.append(Turn(int(found[1]), before, chaos.kills))
    chaos.count("talk: ok")
    return True


def delete(chaos: Chaos, gateway: RunningServer | KubeClient, sid: str) -> bool:
    """Delete through a gateway or as an administrator, retrying what faults refused."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if isinstance(gateway, KubeClient):
                code = gateway.delete("tutorsessions", sid).status_code
            else:
                code = httpx.delete(f"{gateway.http}/v1/sessions/{sid}", timeout=30).status_code
        except httpx.HTTPError:
            code = 0
        if code in (200, 204, 404):
            with chaos.lock:
                chaos.deleted.add(sid)
            return True
        assert code in (0, 503), f"DELETE {sid}: {code}"
        chaos.count(f"delete: {code}")
        time.sleep(0.2)
    chaos.count("delete: gave up")
    return False


class Client:
    """A client thread: keeps ``KEPT`` sessions of its tutor and talks to them through both
    replicas, and creates, uses and ends short-lived ones (sometimes with a socket open on
    the other replica, which must then be closed).

    It starts with ``FILL`` short-lived sessions, which fill the first pod, so that its first
    kept sessions go to a second, newer pod; once the short-lived ones end, the engine scales
    down, and the ReplicaSet picks which pod goes (the newest, unless told otherwise).
    """

    def __init__(self, chaos: Chaos, index: int, kube_url: str) -> None:
        self.chaos, self.index = chaos, index
        self.tutor = TUTORS[index]
        self.rng = random.Random(SEED * 10 + index)
        self.kube = KubeClient(kube_url)
        self.kept: list[Conversation] = []
        self.ephemeral: list[Conversation] = []
        self.filled = 0
        self.draining = True
        self.sent = 0
        self.thread = threading.Thread(target=self.run, name=f"client-{index}", daemon=True)

    def run(self) -> None:
        chaos = self.chaos
        try:
            while True:
                with chaos.lock:
                    go = chaos.lock.wait_for(
                        lambda: chaos.stop.is_set() or chaos.done[self.index] < chaos.allowed,
                        timeout=120,
                    )
                    if not go or chaos.stop.is_set():
                        return
                self.step()
                with chaos.lock:
                    chaos.done[self.index] += 1
                    chaos.lock.notify_all()
        except BaseException as exc:  # reported by the main thread
            with chaos.lock:
                chaos.errors.append(f"client {self.index}: {exc!r}")
                chaos.lock.notify_all()
            raise
        finally:
            self.kube.close()

    def text(self) -> str:
        self.sent += 1
        return f"message {self.sent} of client {self.index}"

    def talk(self, gateway: RunningServer, conversation: Conversation) -> None:
        if talk(self.chaos, gateway, conversation, self.text()):
            conversation.saw(self.kube.get("tutorsessions", conversation.sid))

    def step(self) -> None:
        rng, gateways = self.rng, self.chaos.gateways
        gateway = rng.choice(gateways)
        if self.filled < FILL or len(self.kept) < 2:
            self.filled += 1
            self.start(gateway, kept=self.filled > FILL)
            return
        if self.draining:  # the sessions filling the first pod end: a scale-down
            if rng.random() < 0.7:
                self.end(self.ephemeral.pop(rng.randrange(len(self.ephemeral))))
            else:
                self.talk(gateway, rng.choice(self.kept))
            self.draining = bool(self.ephemeral)
            return
        if len(self.kept) < KEPT:
            self.start(gateway, kept=True)
            return
        roll = rng.random()
        if roll < 0.45 or (roll >= 0.7 and not self.ephemeral):
            self.talk(gateway, rng.choice(self.kept))
        elif roll < 0.7 and len(self.ephemeral) < EPHEMERAL:
            self.start(gateway, kept=False)
        elif roll < 0.7:
            self.talk(gateway, rng.choice(self.ephemeral))
        else:
            self.end(self.ephemeral.pop(rng.randrange(len(self.ephemeral))))

    def start(self, gateway: RunningServer, kept: bool) -> None:
        """A new session, and a first message through either replica."""
        if conversation := create(self.chaos, gateway, self.tutor, kept=kept):
            (self.kept if kept else self.ephemeral).append(conversation)
            self.talk(self.rng.choice(self.chaos.gateways), conversation)

    def end(self, conversation: Conversation) -> None:
        """Delete a short-lived session: through a replica or as an administrator; in one of
        three cases while a socket to it is open on the other replica."""
        rng, gateways = self.rng, self.chaos.gateways
        how = rng.choice(["gateway", "admin", "open"])
        if how != "open":
            target = self.kube if how == "admin" else rng.choice(gateways)
            delete(self.chaos, target, conversation.sid)
            return
        first = rng.randrange(len(gateways))
        with contextlib.ExitStack() as stack:
            try:
                ws = stack.enter_context(open_ws(gateways[first], conversation.body))
                ws.send(json.dumps({"type": "text", "content": self.text()}))
                reply = json.loads(ws.recv(timeout=REPLY_SECONDS))
            except CLIENT_ERRORS:
                reply = {}
            if reply.get("type") != "text":  # not relayed: no socket to watch close
                stack.close()
                delete(self.chaos, gateways[1 - first], conversation.sid)
                return
            if not delete(self.chaos, gateways[1 - first], conversation.sid):
                return
            # The replica holding the socket learns of the deletion by its watch (or re-list)
            # and closes the socket with 4410; other endings are counted.
            try:
                while json.loads(ws.recv(timeout=30)).get("type") == "error":
                    pass
                self.chaos.errors.append(f"{conversation.sid[:8]}: a frame after its deletion")
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                self.chaos.count(f"open socket closed: {code}")
            except TimeoutError:
                self.chaos.errors.append(
                    f"{conversation.sid[:8]}: deleted, but its socket on gateway {first} "
                    "stayed open for 30s"
                )


# -- perturbations --


def accounts() -> dict[str, str]:
    """Component -> the user name its requests carry (its ServiceAccount)."""
    return {
        component: f"system:serviceaccount:{NAMESPACE}:{account}"
        for component, account in chart_rbac(NAMESPACE).accounts.items()
    }


def engine_pods(kube: KubeClient, live: bool = True) -> list[dict[str, Any]]:
    pods = [
        p for p in kube.list("pods") if names.LABEL_ENGINE in (p["metadata"].get("labels") or {})
    ]
    if live:
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def visible(gateway: RunningServer, sid: str) -> bool:
    try:
        return httpx.get(f"{gateway.http}/v1/sessions/{sid}", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def perturb(kind: str, rng: random.Random, chaos: Chaos, kube: KubeClient) -> str:
    """Apply one perturbation; a line for the log."""
    api, users = chaos.api, accounts()
    if kind == "drop":
        resource, abort = rng.choice(WATCHED), rng.random() < 0.5
        return f"dropped {api.drop_watches(resource, abort=abort)} watches of {resource} {abort=}"
    if kind == "gone":  # every watcher resumes from a compacted version: 410, re-list
        resource = rng.choice(WATCHED)
        api.compact(resource)
        return f"410 for {api.drop_watches(resource)} watches of {resource}"
    if kind in ("conflict", "error", "hang"):
        component = rng.choice(["operator", "gateway"])
        choices = OPERATOR_RESOURCES if component == "operator" else GATEWAY_RESOURCES
        resource = rng.choice(choices)
        count = rng.randint(1, 2) if kind == "hang" else rng.randint(1, 4)
        after = kind != "conflict" and rng.random() < 0.5
        methods = WRITES | {"GET"} if kind != "conflict" and rng.random() < 0.3 else WRITES
        api.inject(
            kind, count, methods=methods, resource=resource, user=users[component], after=after
        )
        return f"{count} x {kind} ({after=}) on {sorted(methods)} {resource} of the {component}"
    if kind == "kill_pod":
        pods = engine_pods(kube)
        if not pods:
            return "no pod to delete"
        pod = rng.choice(pods)["metadata"]["name"]
        chaos.kill(kube, pod)
        return f"deleted pod {pod}"
    if kind == "blind_gateway":
        # A session deleted while both replicas' watches are down and their re-lists hang;
        # the history is compacted past it: only a full re-list can tell them.
        gateway = rng.choice(chaos.gateways)
        victim = None
        deadline = time.monotonic() + 30
        tutor = rng.choice(TUTORS)
        while victim is None and time.monotonic() < deadline:
            victim = create(chaos, gateway, tutor, kept=False)
            if victim is None:
                time.sleep(0.2)
        assert victim is not None, "could not create a session within 30s"
        eventually(
            lambda: [g.http for g in chaos.gateways if not visible(g, victim.sid)],
            30,
            "the new session to be visible on both replicas",
        )
        api.inject("hang", 2, methods={"GET"}, resource="tutorsessions", user=users["gateway"])
        api.drop_watches("tutorsessions", abort=rng.random() < 0.5)
        assert delete(chaos, kube, victim.sid)
        api.compact("tutorsessions")
        return f"deleted session {victim.sid[:8]} behind the gateways' backs"
    if kind == "blind_operator":
        pods = engine_pods(kube)
        if not pods:
            return "no pod to delete"
        pod = rng.choice(pods)["metadata"]["name"]
        api.inject("hang", 2, methods={"GET"}, resource="pods", user=users["operator"])
        api.drop_watches("pods", abort=True)
        chaos.kill(kube, pod)
        api.compact("pods")
        return f"deleted pod {pod} behind the operator's back"
    raise ValueError(kind)


# -- what must hold at the end --


def session_problems(kube: KubeClient) -> list[str]:
    """Every live TutorSession is Active on an existing, not terminating pod of its engine."""
    pods = {p["metadata"]["name"]: p for p in engine_pods(kube, live=False)}
    problems = []
    for obj in kube.list("tutorsessions"):
        name, status = obj["metadata"]["name"][:8], obj.get("status") or {}
        if obj["metadata"].get("deletionTimestamp"):
            problems.append(f"session {name} is still being deleted")
            continue
        pod = pods.get(status.get("pod") or "")
        conditions = [c.get("message") for c in status.get("conditions") or []]
        if status.get("phase") != "Active":
            problems.append(f"session {name}: {status.get('phase')} {conditions}")
        elif pod is None:
            problems.append(f"session {name}: Active on pod {status.get('pod')}, which is gone")
        elif pod["metadata"].get("deletionTimestamp"):
            problems.append(f"session {name}: Active on terminating pod {status['pod']}")
        elif not str(status.get("endpoint")).startswith(f"http://{pod['status'].get('podIP')}:"):
            problems.append(f"session {name}: endpoint {status.get('endpoint')} of no pod")
        elif pod["metadata"]["labels"][names.LABEL_ENGINE] != f"tutor-{obj['spec']['tutorId']}":
            problems.append(f"session {name}: on pod {status['pod']} of another engine")
        elif status.get("engine") != f"tutor-{obj['spec']['tutorId']}":
            problems.append(f"session {name}: engine {status.get('engine')}")
    return problems


def children_problems(kube: KubeClient) -> list[str]:
    """One Deployment and Service (at most one PDB) per TutorEngine; no more live pods than
    replicas; the engine's status counts the ready pods that exist."""
    engines = {e["metadata"]["name"]: e for e in kube.list("tutorengines")}
    children = {
        "Deployment": kube.list("deployments"),
        "Service": kube.list("services"),
        "PodDisruptionBudget": kube.list("poddisruptionbudgets"),
    }
    problems = []
    for kind, objects in children.items():
        owners = collections.Counter(
            (o["metadata"].get("labels") or {}).get(names.LABEL_ENGINE) for o in objects
        )
        owners.pop(None, None)
        for engine in engines.keys() | owners.keys():
            wanted = (0, 1) if kind == "PodDisruptionBudget" else (1,)
            if engine not in engines or owners[engine] not in wanted:
                problems.append(f"{owners[engine]} {kind}s of engine {engine} ({len(engines)})")
    pods = engine_pods(kube)
    deployments = {d["metadata"]["name"]: d for d in children["Deployment"]}
    for name, engine in engines.items():
        mine = [p for p in pods if p["metadata"]["labels"][names.LABEL_ENGINE] == name]
        replicas = (deployments.get(name) or {}).get("spec", {}).get("replicas", 0)
        if len(mine) > replicas:
            problems.append(f"{name}: {len(mine)} live pods for {replicas} replicas")
        ready = {
            f"http://{p['status']['podIP']}"
            for p in mine
            for c in p.get("status", {}).get("conditions") or []
            if c["type"] == "Ready" and c["status"] == "True"
        }
        status = engine.get("status") or {}
        reported = {e.rsplit(":", 1)[0] for e in status.get(READY_ENDPOINTS) or []}
        if status.get("readyReplicas") != len(ready) or reported != ready:
            problems.append(
                f"{name}: status says {status.get('readyReplicas')} ready "
                f"{sorted(reported)}, the pods {sorted(ready)}"
            )
    return problems


def gateway_problems(chaos: Chaos, kube: KubeClient) -> list[str]:
    """Both replicas list exactly the API's sessions; deleted ones are 404 on both."""
    live = {o["metadata"]["name"] for o in kube.list("tutorsessions")}
    problems = []
    for index, gateway in enumerate(chaos.gateways):
        listed = httpx.get(f"{gateway.http}/v1/sessions", timeout=10).json()["sessions"]
        ids = {s["session_id"] for s in listed}
        for sid in sorted(ids - live):
            deleted = "deleted" if sid in chaos.deleted else "unknown"
            problems.append(f"gateway {index} lists {deleted} session {sid[:8]}")
        for sid in sorted(live - ids):
            problems.append(f"gateway {index} does not list live session {sid[:8]}")
        for sid in sorted(chaos.deleted):
            code = httpx.get(f"{gateway.http}/v1/sessions/{sid}", timeout=10).status_code
            if code != 404:
                problems.append(f"gateway {index}: GET deleted session {sid[:8]} is {code}")
    return problems


def continuity_problems(chaos: Chaos, conversation: Conversation) -> list[str]:
    """A kept session only left pods the test deleted, and never forgot its conversation: each
    answered turn remembers more than the one before (a reply cut by a deleted pod may not
    have been saved, so numbers can skip, never fall), up to what the engine keeps."""
    sid = conversation.sid[:8]
    problems = [
        f"session {sid} left pod {pod}, which the test never deleted (pods: {conversation.pods})"
        for pod in conversation.pods[:-1]
        if pod not in chaos.killed
    ]
    for earlier, later in zip(conversation.turns, conversation.turns[1:], strict=False):
        if later.number <= earlier.number and earlier.number < MAX_TURN:
            problems.append(
                f"session {sid} forgot its conversation (turn {earlier.number}, then "
                f"{later.number}; pods: {conversation.pods}, deleted by the test before the "
                f"later reply: {later.killed_after})"
            )
    return problems


# -- the test --


@pytest.fixture
def redis_store() -> Iterator[RedisServer]:
    """The engines' history store: a real redis-server with a password."""
    with RedisServer(password="chaos-history") as server:
        yield server


def test_chaos(
    kube_api: RunningEmulator,
    kube: KubeClient,
    kubelet: Any,
    operator_factory: Any,
    gateway_factory: Any,
    redis_store: RedisServer,
) -> None:
    rng = random.Random(SEED)
    password = base64.b64encode((redis_store.password or "").encode()).decode()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": HISTORY_SECRET},
        "data": {"password": password},
    }
    kube.create("secrets", secret).raise_for_status()
    operator: OperatorProcess = operator_factory(
        engine={"history": {"url": redis_store.url, "passwordSecret": HISTORY_SECRET}},
        **OPERATOR_SETTINGS,
    )
    gateways = [cluster_gateway(gateway_factory, kube_api.url, **GATEWAY_SETTINGS) for _ in "ab"]
    chaos = Chaos(gateways, kube_api)
    clients = [Client(chaos, i, kube_api.url) for i in range(len(TUTORS))]
    started = time.monotonic()

    def allow(ops: int) -> None:
        with chaos.lock:
            chaos.allowed = ops
            chaos.lock.notify_all()

    def clients_reached(ops: int, timeout: float, what: str) -> None:
        def behind() -> list[str]:
            with chaos.lock:
                assert not chaos.errors, chaos.errors
                return [f"client {i}: {d}/{ops}" for i, d in enumerate(chaos.done) if d < ops]

        eventually(behind, timeout, what)

    try:
        for client in clients:
            client.thread.start()
        # Warm-up (engines cold-start): each client fills a pod, then has two kept sessions.
        allow(WARM_UP)
        clients_reached(WARM_UP, 90, "the clients' first sessions")
        eventually(
            lambda: [f"client {c.index}" for c in clients if not any(k.turns for k in c.kept)],
            60,
            "a first answer for each client",
        )
        print(f"warm after {time.monotonic() - started:.1f}s")

        schedule = rng.sample(PERTURBATIONS, len(PERTURBATIONS))
        for number, kind in enumerate(schedule):
            base = WARM_UP + number * OPS_PER_ROUND
            allow(base + OPS_PER_ROUND)
            clients_reached(base + 1, 60, f"round {number}: the clients to start")
            line = perturb(kind, rng, chaos, kube)
            chaos.observe(kube)
            clients_reached(base + OPS_PER_ROUND, 60, f"round {number} ({kind}) to finish")
            chaos.observe(kube)
            print(f"{time.monotonic() - started:5.1f}s round {number}: {line}")
    finally:
        chaos.stop.set()
        allow(0)
        for client in clients:
            client.thread.join(timeout=60)
    assert not [c.index for c in clients if c.thread.is_alive()], "a client did not stop"
    assert not chaos.errors, chaos.errors
    kube_api.clear_faults()
    chaos_seconds = time.monotonic() - started

    # Sessions created although their client got a 503 (a fault after the write): an
    # administrator removes them; they count as deleted from here on.
    for obj in kube.list("tutorsessions"):
        if obj["metadata"]["name"] not in chaos.conversations:
            chaos.count("orphan session removed")
            assert delete(chaos, kube, obj["metadata"]["name"])

    live = {o["metadata"]["name"] for o in kube.list("tutorsessions")}
    assert not live & chaos.deleted, "deleted sessions still in the API"
    kept = [k for c in clients for k in c.kept]
    assert len(kept) == KEPT * len(TUTORS), [len(c.kept) for c in clients]
    lost = [k.sid[:8] for k in kept if k.sid not in live]
    assert not lost, f"kept sessions gone from the API: {lost}"

    eventually(lambda: session_problems(kube), 60, "sessions not Active on a live pod")
    eventually(lambda: children_problems(kube), 60, "engine children not as they should be")
    eventually(lambda: gateway_problems(chaos, kube), 30, "the gateways' views are wrong")

    # The conversations the clients kept using answer on both replicas, as they were.
    chaos.observe(kube)
    for conversation in kept:
        for index, gateway in enumerate(gateways):
            assert talk(chaos, gateway, conversation, f"still there, gateway {index}?"), (
                f"kept session {conversation.sid[:8]} does not answer on gateway {index}"
            )
    chaos.observe(kube)
    problems = [p for k in kept for p in continuity_problems(chaos, k)]
    assert not problems, "\n".join(problems)

    assert operator.process is not None and operator.process.poll() is None, "operator died"
    for gateway in gateways:
        assert httpx.get(f"{gateway.http}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{gateway.http}/readyz", timeout=10).status_code == 200

    moved = sum(len(k.pods) > 1 for k in kept)
    removed = chaos.pods_seen - chaos.killed - {p["metadata"]["name"] for p in engine_pods(kube)}
    print(
        f"chaos {chaos_seconds:.1f}s, total {time.monotonic() - started:.1f}s; "
        f"{len(chaos.conversations)} sessions, {len(chaos.deleted)} deleted, "
        f"{len(chaos.killed)} pods deleted, {len(removed)} removed by scale-downs, "
        f"{moved} kept sessions moved; {dict(sorted(chaos.counts.items()))}"
    )
