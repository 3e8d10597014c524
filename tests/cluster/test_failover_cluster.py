"""Conversations survive engine loss in cluster mode (issue 11, point 5): the real operator,
the gateway in kubernetes mode, the fake kubelet, the chart's RBAC and a real ``redis-server``
holding every conversation.

The store's password lives in a Secret of the namespace; the operator's engine defaults point
at the store (``history.url``) and at the Secret (``history.passwordSecret``), so engine
pods get ``ENGINE_HISTORY_URL`` and ``ENGINE_HISTORY_PASSWORD`` (by reference, resolved by the
kubelet). The tutor's engine is an administrator's TutorEngine with two pods from the start
(``minReplicas: 2``) and a mock LLM that takes a while per word, so replies are under way long
enough to be cut.

The mock LLM says "This is turn N, with M earlier messages": N counts the user messages the
engine saw, its own history included, so N tells whether a reply had the whole conversation.
A stopping pod drains (its turns in flight finish, then its sockets close 1012), so a rollout
or a scale-down must cut no reply at all: every message gets its reply, with the whole history.
Everything waits on conditions with deadlines; a reply that is mid-way is recognised by the
engine's own first-token metric, not by a sleep.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from tutor_contract.crd import READY_ENDPOINTS
from tutor_engine.history.base import decode_message
from tutor_engine.history.redis import history_key, tombstone_key
from tutor_gateway.relay import REPLY_CUT, REPLY_MAYBE_CUT
from tutor_operator import names
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.gateway.helpers import create_session, open_ws
from tests.servers import RunningServer
from tests.support.cluster import KubeClient, wait_for
from tests.support.kube_emulator import RunningEmulator
from tests.support.kubelet import HASH_LABEL, FakeKubelet, is_ready
from tests.support.metrics import scrape
from tests.support.redis_server import RedisServer

from .test_gateway_cluster import cluster_gateway

pytestmark = pytest.mark.timeout(150)

PASSWORD = "history-s3cret-pw"
PASSWORD_SECRET = "tutor-history"  # a Secret of the test namespace, key "password"
TOKEN_SECONDS = "0.05"  # the mock LLM's pause per word: a short reply takes ~1 s
LONG = " ".join(["word"] * 60)  # its reply takes ~4 s: long enough to be cut mid-way
REPLY = re.compile(r"heard: (.*)\. This is turn (\d+), with (\d+) earlier messages")
REPLY_SECONDS = 60  # one reply, a failover included, comes within this


# -- the cluster --------------------------------------------------------------------------


@dataclasses.dataclass
class HistoryCluster:
    """What the tests touch: the API (as an administrator), the kubelet, Redis (the server
    and a client of it, to look inside), a gateway."""

    api: RunningEmulator
    kube: KubeClient
    kubelet: FakeKubelet
    store: RedisServer
    redis: redis.Redis
    gateway: RunningServer
    gateway_factory: Callable[..., RunningServer]

    def engine(self, tutor: int, **spec: Any) -> None:
        """An administrator's TutorEngine with two pods (unless ``spec`` says otherwise),
        waited for until they are ready."""
        body = {
            "apiVersion": "tutor.vts.dev/v1alpha1",
            "kind": "TutorEngine",
            "metadata": {"name": f"tutor-{tutor}"},
            "spec": {
                "tutorId": tutor,
                "minReplicas": 2,
                "maxReplicas": 2,
                "env": [{"name": "ENGINE_LLM_MOCK_TOKEN_SECONDS", "value": TOKEN_SECONDS}],
                **spec,
            },
        }
        self.kube.create("tutorengines", body).raise_for_status()
        pods = body["spec"]["minReplicas"]
        wait_for(lambda: len(ready_endpoints(self.kube, tutor)) == pods, 90, "ready pods")

    def session_status(self, sid: str) -> dict[str, Any]:
        return (self.kube.get("tutorsessions", sid) or {}).get("status") or {}

    def on_distinct_pods(self, sessions: list[dict[str, Any]]) -> list[str]:
        """Wait until each session is Active; their pods (distinct, as the operator spreads)."""

        def pods() -> list[str] | None:
            statuses = [self.session_status(s["session_id"]) for s in sessions]
            if all(s.get("phase") == "Active" for s in statuses):
                return [s["pod"] for s in statuses]
            return None

        placed = wait_for(pods, 60, "the sessions Active")
        assert len(set(placed)) == len(placed), f"the operator spreads sessions: {placed}"
        return placed


@pytest.fixture
def history_redis() -> Iterator[RedisServer]:
    """A real redis-server with a password (stopped after the cluster is)."""
    with RedisServer(password=PASSWORD) as server:
        yield server


@pytest.fixture
def history_cluster(
    history_redis: RedisServer,
    kube_api: RunningEmulator,
    kube: KubeClient,
    kubelet: FakeKubelet,
    operator_factory: Any,
    gateway_factory: Any,
) -> Iterator[HistoryCluster]:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": PASSWORD_SECRET},
        "data": {"password": base64.b64encode(PASSWORD.encode()).decode()},
    }
    kube.create("secrets", secret).raise_for_status()
    operator_factory(
        engine={
            "history": {"url": history_redis.url, "passwordSecret": PASSWORD_SECRET},
            "drainSeconds": 10,  # turns in flight finish within it on SIGTERM
        }
    )
    gateway = cluster_gateway(gateway_factory, kube_api.url, engine_start_timeout_seconds=60)
    client = redis.Redis(host="127.0.0.1", port=history_redis.port, password=PASSWORD)
    yield HistoryCluster(kube_api, kube, kubelet, history_redis, client, gateway, gateway_factory)
    client.close()


def ready_endpoints(kube: KubeClient, tutor: int) -> list[str]:
    engine = kube.get("tutorengines", f"tutor-{tutor}") or {}
    return (engine.get("status") or {}).get(READY_ENDPOINTS) or []


def engine_pods(kube: KubeClient, tutor: int) -> list[dict[str, Any]]:
    """The engine's pods in the API, terminating ones included."""
    return [
        p
        for p in kube.list("pods")
        if (p["metadata"].get("labels") or {}).get(names.LABEL_ENGINE) == f"tutor-{tutor}"
    ]


def failovers(gateway: RunningServer, outcome: str) -> float:
    text = httpx.get(f"{gateway.http}/metrics", timeout=10).text
    found = re.search(rf'tutor_gateway_failovers_total{{outcome="{outcome}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def first_tokens(endpoint: str) -> float:
    """How many replies the engine at ``endpoint`` has started (its LLM's first tokens)."""
    found = scrape(f"{endpoint}/metrics")  # whatever other labels it has
    return found.total("tutor_engine_stage_seconds_count", stage="llm_first_token")


def stored(client: redis.Redis, sid: str) -> list[tuple[str, str]]:
    """(role, content) of the messages Redis holds for a session, oldest first."""
    return [
        (m.role, m.content) for m in map(decode_message, client.lrange(history_key(sid), 0, -1))
    ]


def session_keys(client: redis.Redis, sid: str) -> set[str]:
    """Every key Redis has for a session (its two keys share the hash tag ``{sid}``)."""
    return {key.decode() for key in client.scan_iter(match=f"tutor:{{{sid}}}*")}


# -- talking --------------------------------------------------------------------------------


@dataclasses.dataclass
class Said:
    """One message and what came back for it."""

    text: str
    turn: int | None = None  # "This is turn N" of its reply; None: not answered
    earlier: int | None = None
    cut: list[str] = dataclasses.field(default_factory=list)  # error/interrupted frames first


class Talker:
    """One client socket of a session: says numbered messages, reads each reply."""

    def __init__(self, ws: ClientConnection, body: dict[str, Any], name: str) -> None:
        self.ws, self.body, self.name = ws, body, name
        self.said: list[Said] = []
        self.closed: str | None = None  # how the socket ended, if it did
        self.thread: threading.Thread | None = None

    @property
    def sid(self) -> str:
        return self.body["session_id"]

    def say(self, text: str | None = None) -> Said:
        """Send one message; read frames until its text reply (an ``error`` or
        ``interrupted`` before it is noted on the result)."""
        said = Said(text or f"message {len(self.said) + 1} of {self.name}")
        self.said.append(said)
        self.ws.send(json.dumps({"type": "text", "content": said.text}))
        deadline = time.monotonic() + REPLY_SECONDS
        while said.turn is None:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message["type"] != "text":
                said.cut.append(f"{message['type']}: {message.get('content') or message}")
                continue
            found = REPLY.search(message["content"])
            assert found, message
            assert found[1] == said.text, f"{self.name}: a reply to another message: {message}"
            said.turn, said.earlier = int(found[2]), int(found[3])
        return said

    def talk_until(self, stop: threading.Event, pause: float = 0.1) -> None:
        """Talk in a thread until ``stop``; a closed socket or no reply ends it (noted)."""

        def run() -> None:
            while not stop.is_set():
                try:
                    self.say()
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else None
                    self.closed = f"closed {code} {exc.rcvd.reason if exc.rcvd else ''}"
                    return
                except (TimeoutError, AssertionError) as exc:
                    self.closed = f"{type(exc).__name__}: {exc}"
                    return
                stop.wait(pause)

        self.thread = threading.Thread(target=run, name=f"talker-{self.name}", daemon=True)
        self.thread.start()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=REPLY_SECONDS + 10)
        assert not self.thread.is_alive(), f"{self.name}: no reply within {REPLY_SECONDS}s"

    def problems(self) -> list[str]:
        """What shows a lost conversation: a closed socket, a cut reply, a reply that did not
        see every earlier message of the session (turn N is the N-th message said)."""
        found = [f"{self.name}: socket {self.closed}"] if self.closed else []
        for number, said in enumerate(self.said, 1):
            if said.cut:
                found.append(f"{self.name}: message {number} got {said.cut}")
            if said.turn is not None and (said.turn, said.earlier) != (number, 2 * number - 2):
                found.append(
                    f"{self.name}: message {number} answered as turn {said.turn} with "
                    f"{said.earlier} earlier messages: history lost"
                )
        return found


@contextlib.contextmanager
def talkers(gateway: RunningServer, sessions: list[dict[str, Any]]) -> Iterator[list[Talker]]:
    """A socket for each session (named a, b, c...), closed at the end."""
    with contextlib.ExitStack() as stack:
        yield [
            Talker(stack.enter_context(open_ws(gateway, body)), body, chr(ord("a") + i))
            for i, body in enumerate(sessions)
        ]


def talk_through(talkers_: list[Talker], change: Callable[[], None], rounds_after: int = 1) -> None:
    """Every talker talks (a thread each) while ``change`` runs, then ``rounds_after`` more
    messages each; no conversation may show a loss (``Talker.problems``)."""
    stop = threading.Event()
    for talker in talkers_:
        talker.talk_until(stop)
    try:
        change()
    finally:
        stop.set()
        for talker in talkers_:
            talker.join()
    for talker in talkers_:
        if not talker.closed:
            for _ in range(rounds_after):
                talker.say()
    problems = [p for t in talkers_ for p in t.problems()]
    assert not problems, "\n".join(problems)


# -- the tests ------------------------------------------------------------------------------


def test_kill_9_mid_reply_cuts_one_reply_and_the_same_socket_goes_on_with_the_history(
    history_cluster: HistoryCluster,
) -> None:
    cluster, tutor = history_cluster, 11
    cluster.engine(tutor)
    sessions = [create_session(cluster.gateway, tutor_id=tutor) for _ in "ab"]
    victim_pod, other_pod = cluster.on_distinct_pods(sessions)
    pod = cluster.kube.get("pods", victim_pod)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["ENGINE_HISTORY_URL"]["value"] == cluster.store.url
    reference = {"secretKeyRef": {"name": PASSWORD_SECRET, "key": "password"}}
    assert env["ENGINE_HISTORY_PASSWORD"] == {
        "name": "ENGINE_HISTORY_PASSWORD",
        "valueFrom": reference,
    }
    with talkers(cluster.gateway, sessions) as (a, b):
        assert a.say("my name is Ada").turn == 1
        assert b.say("my name is Bob").turn == 1
        assert a.say("I like vectors").turn == 2

        endpoint = cluster.session_status(a.sid)["endpoint"]
        started = first_tokens(endpoint)
        a.ws.send(json.dumps({"type": "text", "content": LONG}))
        # Its LLM has begun: the reply is under way, with seconds to go.
        wait_for(lambda: first_tokens(endpoint) > started, 30, "the long reply to start")
        pid = cluster.kubelet.processes()[victim_pod]
        os.kill(pid, signal.SIGKILL)

        # One error for it (the gateway may not have read the turn's receipt yet: "may not").
        cut = json.loads(a.ws.recv(timeout=REPLY_SECONDS))
        assert cut["type"] == "error" and cut["content"] in (REPLY_CUT, REPLY_MAYBE_CUT), cut
        after = a.say("what is my name")  # on the same socket
        assert not after.cut, after.cut
        # Turns 1 and 2 are remembered (the cut one was never saved): the count goes on.
        assert (after.turn, after.earlier) == (3, 4), vars(after)
        assert b.say("and mine?").turn == 2  # the other session did not notice
        assert a.say("still there?").turn == 4

    assert failovers(cluster.gateway, "resumed") == 1
    assert failovers(cluster.gateway, "unavailable") == 0
    assert cluster.kubelet.processes().get(victim_pod) != pid, "the kubelet restarted it"
    assert cluster.session_status(b.sid)["pod"] == other_pod
    users = [content for role, content in stored(cluster.redis, a.sid) if role == "user"]
    assert users == ["my name is Ada", "I like vectors", "what is my name", "still there?"]


def test_a_rolling_update_with_three_live_sessions_loses_none(
    history_cluster: HistoryCluster,
) -> None:
    cluster, tutor = history_cluster, 12
    cluster.engine(tutor)
    sessions = [create_session(cluster.gateway, tutor_id=tutor) for _ in "abc"]
    old = {p["metadata"]["name"] for p in engine_pods(cluster.kube, tutor)}
    old_hashes = {p["metadata"]["labels"][HASH_LABEL] for p in engine_pods(cluster.kube, tutor)}
    with talkers(cluster.gateway, sessions) as talking:
        for talker in talking:
            talker.say()

        def roll() -> None:
            env = [
                {"name": "ENGINE_LLM_MOCK_TOKEN_SECONDS", "value": TOKEN_SECONDS},
                {"name": "ROLLOUT", "value": "2"},  # a new pod template
            ]
            cluster.kube.patch("tutorengines", f"tutor-{tutor}", {"spec": {"env": env}})

            def rolled() -> bool:
                pods = engine_pods(cluster.kube, tutor)
                return (
                    len(pods) == 2
                    and all(p["metadata"]["labels"][HASH_LABEL] not in old_hashes for p in pods)
                    and all(
                        is_ready(p) and not p["metadata"].get("deletionTimestamp") for p in pods
                    )
                )

            wait_for(rolled, 120, "both pods replaced by ready pods of the new template")

        talk_through(talking, roll)

    new = {p["metadata"]["name"] for p in engine_pods(cluster.kube, tutor)}
    assert not new & old
    statuses = [cluster.session_status(s["session_id"]) for s in sessions]
    assert all(s["phase"] == "Active" and s["pod"] in new for s in statuses), statuses
    assert failovers(cluster.gateway, "unavailable") == 0
    assert failovers(cluster.gateway, "resumed") >= len(sessions)  # each moved at least once


def test_scale_down_from_two_pods_to_one_loses_no_session(
    history_cluster: HistoryCluster,
) -> None:
    cluster, tutor = history_cluster, 13
    cluster.engine(tutor)
    sessions = [create_session(cluster.gateway, tutor_id=tutor) for _ in "ab"]
    placed = cluster.on_distinct_pods(sessions)
    with talkers(cluster.gateway, sessions) as talking:
        for talker in talking:
            talker.say()

        def scale_down() -> None:
            # Both pods hold a session: only a lower maximum takes one away.
            spec = {"minReplicas": 1, "maxReplicas": 1}
            cluster.kube.patch("tutorengines", f"tutor-{tutor}", {"spec": spec})

            def one_left() -> bool:
                pods = engine_pods(cluster.kube, tutor)
                deployment = cluster.kube.get("deployments", f"tutor-{tutor}") or {}
                return (
                    len(pods) == 1
                    and is_ready(pods[0])
                    and deployment.get("spec", {}).get("replicas") == 1
                )

            wait_for(one_left, 90, "one pod left")

        talk_through(talking, scale_down)

    (survivor,) = [p["metadata"]["name"] for p in engine_pods(cluster.kube, tutor)]
    assert survivor in placed
    statuses = [cluster.session_status(s["session_id"]) for s in sessions]
    assert all(s["phase"] == "Active" and s["pod"] == survivor for s in statuses), statuses
    assert failovers(cluster.gateway, "resumed") == 1  # the session of the pod that went
    assert failovers(cluster.gateway, "unavailable") == 0


def test_history_is_gone_from_redis_after_delete_and_after_expiry(
    history_cluster: HistoryCluster,
) -> None:
    cluster, tutor = history_cluster, 14
    cluster.engine(tutor, minReplicas=1)
    client = cluster.redis
    short = cluster_gateway(
        cluster.gateway_factory,
        cluster.api.url,
        engine_start_timeout_seconds=60,
        session_timeout_seconds=3,
    )
    deleted = create_session(cluster.gateway, tutor_id=tutor)
    expiring = create_session(short, tutor_id=tutor)
    for gateway, body in ((cluster.gateway, deleted), (short, expiring)):
        with talkers(gateway, [body]) as (talker,):
            talker.say("remember this")
            talker.say("and this")
        assert len(stored(client, body["session_id"])) == 4

    sid = deleted["session_id"]
    assert httpx.delete(f"{cluster.gateway.http}/v1/sessions/{sid}").status_code == 204
    wait_for(
        lambda: session_keys(client, sid) == {tombstone_key(sid)},
        30,
        "only the tombstone left of the deleted session",
    )
    assert not client.exists(history_key(sid))

    sid = expiring["session_id"]
    wait_for(lambda: cluster.kube.get("tutorsessions", sid) is None, 60, "the session to expire")
    wait_for(
        lambda: session_keys(client, sid) == {tombstone_key(sid)},
        30,
        "only the tombstone left of the expired session",
    )
    # The history's own TTL is an hour away (the operator's session timeout plus a margin):
    # it was deleted, it did not expire.
    assert client.pttl(tombstone_key(sid)) > 3_000_000


def test_two_sessions_on_different_pods_never_see_each_others_history(
    history_cluster: HistoryCluster,
) -> None:
    cluster, tutor = history_cluster, 15
    cluster.engine(tutor)
    sessions = [create_session(cluster.gateway, tutor_id=tutor) for _ in "ab"]
    cluster.on_distinct_pods(sessions)
    with talkers(cluster.gateway, sessions) as (a, b):
        for round_ in range(1, 4):
            assert (a.say(f"Ada {round_}").turn, b.say(f"Bob {round_}").turn) == (round_, round_)
        # The same session through another pod: it sees its own history only.
        a_pod = cluster.session_status(a.sid)["pod"]
        cluster.kube.delete("pods", a_pod).raise_for_status()
        for round_ in range(4, 6):
            assert (a.say(f"Ada {round_}").turn, b.say(f"Bob {round_}").turn) == (round_, round_)
        assert not a.problems() and not b.problems(), a.problems() + b.problems()
    client = cluster.redis  # two lists, each of its own session's messages only
    for talker, name in ((a, "Ada"), (b, "Bob")):
        history = stored(client, talker.sid)
        assert [c for r, c in history if r == "user"] == [f"{name} {i}" for i in range(1, 6)]
        assert all(f"heard: {name} " in c for r, c in history if r == "assistant"), history


def test_history_is_gone_after_delete_while_the_session_waits_for_a_pod(
    history_cluster: HistoryCluster,
) -> None:
    cluster, tutor = history_cluster, 16
    cluster.engine(tutor, minReplicas=1, maxReplicas=1)
    session = create_session(cluster.gateway, tutor_id=tutor)
    sid = session["session_id"]
    with talkers(cluster.gateway, [session]) as (talker,):
        talker.say("remember this")
    assert len(stored(cluster.redis, sid)) == 2
    # Its one pod goes, and the replacement cannot start without the store's Secret
    # (CreateContainerConfigError): the session waits, Pending, with no endpoint.
    secret = cluster.kube.get("secrets", PASSWORD_SECRET)
    assert secret is not None
    cluster.kube.delete("secrets", PASSWORD_SECRET).raise_for_status()
    cluster.kube.delete("pods", cluster.session_status(sid)["pod"]).raise_for_status()
    wait_for(lambda: cluster.session_status(sid).get("phase") == "Pending", 30, "Pending")
    assert httpx.delete(f"{cluster.gateway.http}/v1/sessions/{sid}").status_code == 204
    wait_for(
        lambda: httpx.get(f"{cluster.gateway.http}/v1/sessions/{sid}").status_code == 404,
        30,
        "the gateway to hear of the deletion",
    )
    # An engine can be had again: the history must go now, not when its TTL runs out.
    body = {k: secret[k] for k in ("apiVersion", "kind", "data")}
    cluster.kube.create("secrets", {**body, "metadata": {"name": PASSWORD_SECRET}})
    wait_for(
        lambda: session_keys(cluster.redis, sid) == {tombstone_key(sid)},
        20,  # the replacement pod starts within seconds
        "only the tombstone left of the session deleted while Pending",
    )
