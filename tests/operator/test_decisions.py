"""Pure decisions and conditions, table-tested: pods, expiry, replicas, placement, idling."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from tutor_operator import conditions as c
from tutor_operator import decisions as d
from tutor_operator import names

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)
SCALING = d.Scaling(
    min_replicas=0,
    max_replicas=2,
    per_replica=2,
    idle_timeout=300,
    idle_policy="ScaleToZero",
    deletable=True,
)


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def session(name: str, created: float = 10, **fields: object) -> d.SessionView:
    return d.SessionView(name=name, created=ago(created), resource_version="1", **fields)


def ready(name: str, ip: str = "10.0.0.1") -> d.PodView:
    return d.PodView(name, d.POD_READY, "", f"http://{ip}:8000")


def pod(**status: object) -> dict:
    return {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": status,
    }


SCHEDULED = {"type": "PodScheduled", "status": "True"}


@pytest.mark.parametrize(
    ("body", "state", "message"),
    [
        (pod(), c.SCHEDULING, "waiting for a node"),
        (
            pod(conditions=[{"type": "PodScheduled", "status": "False", "message": "no GPU"}]),
            c.SCHEDULING,
            "no GPU",
        ),
        (pod(conditions=[SCHEDULED]), c.PULLING, "ContainerCreating"),
        (
            pod(
                conditions=[SCHEDULED],
                containerStatuses=[{"state": {"waiting": {"reason": "ImagePullBackOff"}}}],
            ),
            c.IMAGE_PULL_BACKOFF,
            "ImagePullBackOff",
        ),
        (  # an image that does not pull shows as such, with the kubelet's message
            pod(
                conditions=[SCHEDULED],
                containerStatuses=[
                    {
                        "state": {
                            "waiting": {
                                "reason": "ErrImagePull",
                                "message": 'pull access denied for "ghcr.io/vts/private"',
                            }
                        }
                    }
                ],
            ),
            c.ERR_IMAGE_PULL,
            'pull access denied for "ghcr.io/vts/private"',
        ),
        (
            pod(
                conditions=[SCHEDULED],
                containerStatuses=[
                    {"state": {"waiting": {"reason": "ContainerCreating", "message": "pulling"}}}
                ],
            ),
            c.PULLING,
            "ContainerCreating: pulling",
        ),
        (
            pod(
                conditions=[SCHEDULED],
                containerStatuses=[
                    {"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "exit 1"}}}
                ],
            ),
            c.CRASHING,
            "CrashLoopBackOff: exit 1",
        ),
        (
            pod(
                phase="Running",
                podIP="10.1.2.3",
                conditions=[SCHEDULED, {"type": "Ready", "status": "False"}],
                containerStatuses=[{"state": {"running": {}}}],
            ),
            c.LOADING,
            "engine is loading its models",
        ),
        (
            pod(
                phase="Running",
                podIP="10.1.2.3",
                conditions=[SCHEDULED, {"type": "Ready", "status": "True"}],
                containerStatuses=[{"state": {"running": {}}, "ready": True}],
            ),
            d.POD_READY,
            "",
        ),
        (pod(phase="Failed", message="evicted"), d.POD_FAILED, "evicted"),
        (  # the engine said why it exited: its termination message
            pod(
                phase="Running",
                conditions=[SCHEDULED],
                containerStatuses=[
                    {
                        "name": "engine",
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "b"}},
                        "lastState": {"terminated": {"exitCode": 3, "message": "asr: missing\n"}},
                    },
                    {"name": "vllm", "state": {"running": {}}, "ready": True},
                ],
            ),
            c.MODEL_LOAD_FAILED,
            "asr: missing (container engine, 2 restarts)",
        ),
        (  # restarted and loading again: the last failure still explains the wait
            pod(
                phase="Running",
                podIP="10.1.2.3",
                conditions=[SCHEDULED, {"type": "Ready", "status": "False"}],
                containerStatuses=[
                    {
                        "name": "engine",
                        "restartCount": 1,
                        "state": {"running": {}},
                        "lastState": {"terminated": {"exitCode": 3, "message": "asr: missing"}},
                    }
                ],
            ),
            c.MODEL_LOAD_FAILED,
            "asr: missing (container engine, 1 restarts)",
        ),
        (  # any other crash: exit code and the log tail (FallbackToLogsOnError)
            pod(
                conditions=[SCHEDULED],
                containerStatuses=[
                    {"name": "engine", "restartCount": 1, "state": {"running": {}}},
                    {
                        "name": "vllm",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 1, "message": "CUDA OOM"}},
                    },
                ],
            ),
            c.CRASHING,
            "CrashLoopBackOff: container vllm exited with code 1: CUDA OOM",
        ),
    ],
)
def test_pod_view(body: dict, state: str, message: str) -> None:
    view = d.pod_view(body)
    assert (view.state, view.message) == (state, message)


def test_pod_view_terminating_and_endpoint() -> None:
    body = pod(podIP="fd00::5")
    assert d.pod_endpoint(body) == "http://[fd00::5]:8000"
    body["metadata"]["deletionTimestamp"] = "2026-11-25T12:00:00Z"
    assert d.pod_view(body).state == d.POD_TERMINATING


def test_session_view_reads_the_body() -> None:
    view = d.session_view(
        {
            "metadata": {
                "name": "s",
                "creationTimestamp": "2026-11-25T11:00:00Z",
                "resourceVersion": "9",
            },
            "spec": {"timeoutSeconds": 60},
            "status": {"phase": "Active", "pod": "p", "lastActivity": "2026-11-25T11:30:00.5Z"},
        }
    )
    assert view.created == ago(3600) and view.timeout_seconds == 60
    assert view.last_activity == ago(1799.5) and (view.phase, view.pod) == ("Active", "p")


@pytest.mark.parametrize(
    ("created", "activity", "timeout", "expired"),
    [
        (100, None, 60, True),
        (30, None, 60, False),
        (100, 30, 60, False),
        (100, 61, 60, True),
        (100, 60, 60, True),  # exactly the timeout: expired, as the gateway decides
        (10, 61, 60, True),  # activity, once recorded, counts rather than creation
        (5000, 3599, 3600, False),
    ],
)
def test_is_expired(created: float, activity: float | None, timeout: int, expired: bool) -> None:
    view = session(
        "s",
        created=created,
        timeout_seconds=timeout,
        last_activity=None if activity is None else ago(activity),
    )
    assert d.is_expired(view, NOW) is expired


@pytest.mark.parametrize(
    ("sessions", "busy", "current", "idle_expired", "replicas"),
    [
        (1, 0, 0, False, 1),
        (2, 1, 1, False, 1),
        (3, 1, 1, False, 2),
        (9, 2, 2, False, 2),  # at the maximum
        (1, 2, 2, False, 2),  # pods holding sessions are kept
        (0, 0, 2, False, 1),  # idle: one warm replica until the timeout
        (0, 0, 0, False, 0),
        (0, 0, 1, True, 0),  # idle past the timeout: down to minReplicas
    ],
)
def test_desired_replicas(
    sessions: int, busy: int, current: int, idle_expired: bool, replicas: int
) -> None:
    assert d.desired_replicas(sessions, busy, SCALING, current, idle_expired) == replicas


def test_min_replicas_keep_engines_warm() -> None:
    warm = d.Scaling(1, 2, 2, 300, "ScaleToZero", False)
    assert d.desired_replicas(0, 0, warm, 0, True) == 1


def plan(
    sessions: list[d.SessionView],
    pods: list[d.PodView],
    current: int = 1,
    status: dict | None = None,
    scaling: d.Scaling | None = SCALING,
    **kw: str,
) -> d.EnginePlan:
    return d.plan_engine(
        name="tutor-7",
        generation=1,
        scaling=scaling,
        sessions=sessions,
        pods=pods,
        current_replicas=current,
        status=status or {},
        now=NOW,
        **kw,
    )


def test_new_sessions_go_to_the_least_loaded_ready_pod_up_to_capacity() -> None:
    sessions = [
        session("a", 50, pod="p1", phase="Active", endpoint="http://10.0.0.1:8000"),
        session("b", 40),
        session("c", 30),
        session("d", 20),
    ]
    result = plan(sessions, [ready("p1", "10.0.0.1"), ready("p2", "10.0.0.2")], current=2)
    assert "a" not in result.session_patches or "pod" not in result.session_patches["a"]
    assert result.session_patches["b"]["pod"] == "p2"
    assert result.session_patches["b"]["endpoint"] == "http://10.0.0.2:8000"
    assert result.session_patches["b"]["phase"] == "Active"
    assert result.session_patches["c"]["pod"] == "p1"
    assert result.session_patches["d"]["pod"] == "p2"
    assert result.reassigned == {"b", "c", "d"}
    assert result.replicas == 2
    assert result.status_patch["sessions"] == 4 and result.status_patch["phase"] == "Ready"


def test_full_pods_leave_sessions_pending_at_capacity() -> None:
    sessions = [session(n, 50 - i, pod="p1") for i, n in enumerate("ab")] + [session("c", 1)]
    scaling = d.Scaling(0, 1, 2, 300, "ScaleToZero", True)
    result = plan(sessions, [ready("p1")], scaling=scaling)
    patch = result.session_patches["c"]
    assert patch["phase"] == "Pending" and "pod" not in patch
    assert patch["conditions"][0]["reason"] == c.AT_CAPACITY


@pytest.mark.parametrize(
    ("pods", "current", "reason"),
    [
        ([], 0, c.SCALING_UP),
        ([], 1, c.STARTING),
        (
            [d.PodView("p1", c.SCHEDULING, "0/3 nodes: Insufficient nvidia.com/gpu")],
            1,
            c.SCHEDULING,
        ),
        ([d.PodView("p1", c.SCHEDULING, ""), d.PodView("p2", c.PULLING, "")], 2, c.PULLING),
        ([d.PodView("p1", c.LOADING, ""), d.PodView("p2", c.CRASHING, "")], 2, c.LOADING),
    ],
)
def test_pending_sessions_say_why(pods: list, current: int, reason: str) -> None:
    result = plan([session("s")], pods, current=current)
    patch = result.session_patches["s"]
    assert patch["phase"] == "Pending" and patch["engine"] == "tutor-7"
    assert patch["conditions"][0]["reason"] == reason
    assert result.replicas >= 1 and result.status_patch["phase"] == "Pending"


@pytest.mark.parametrize(
    "reason", [c.MODEL_LOAD_FAILED, c.CRASHING, c.IMAGE_PULL_BACKOFF, c.ERR_IMAGE_PULL]
)
def test_failing_pods_fail_the_engine_and_tell_its_pending_sessions(reason: str) -> None:
    pods = [d.PodView("p1", reason, "asr: missing (container engine, 2 restarts)")]
    result = plan([session("s")], pods)
    cond = result.session_patches["s"]["conditions"][0]
    assert result.session_patches["s"]["phase"] == "Pending"
    assert (cond["reason"], cond["message"]) == (reason, f"pod p1: {pods[0].message}")
    assert result.status_patch["phase"] == "Failed"
    ready_cond = next(x for x in result.status_patch["conditions"] if x["type"] == c.READY)
    assert ready_cond["reason"] == reason and "asr: missing" in ready_cond["message"]


def test_a_session_keeps_its_pod_while_it_loads_and_moves_when_it_is_gone() -> None:
    loading = plan([session("s", pod="p1", phase="Active")], [d.PodView("p1", c.LOADING, "x")])
    assert loading.session_patches["s"]["phase"] == "Pending"
    assert "pod" not in loading.session_patches["s"] and not loading.reassigned
    gone = plan([session("s", pod="p0", phase="Active")], [ready("p1")])
    assert gone.session_patches["s"]["pod"] == "p1" and gone.reassigned == {"s"}


def test_expired_sessions_are_marked_then_deleted() -> None:
    sessions = [
        session("old", 4000, timeout_seconds=3600),
        session("done", 10, phase="Expired"),
        session("fresh", 10),
    ]
    result = plan(sessions, [ready("p1")])
    assert result.expire == ["done", "old"]
    assert result.session_patches["old"]["phase"] == "Expired"
    assert result.session_patches["old"]["conditions"][0]["reason"] == c.EXPIRED
    assert "done" not in result.session_patches
    assert result.status_patch["sessions"] == 1


def test_settled_state_writes_nothing() -> None:
    first = plan([session("s")], [ready("p1")])
    status = {**first.status_patch}
    settled = session(
        "s",
        phase="Active",
        engine="tutor-7",
        pod="p1",
        endpoint="http://10.0.0.1:8000",
        conditions=tuple(first.session_patches["s"]["conditions"]),
    )
    marked = dataclasses.replace(ready("p1"), busy=True, cost=1)
    again = plan([settled], [marked], status=status)
    assert again.session_patches == {} and again.status_patch == {} and again.replicas == 1
    assert again.pod_patches == {} and again.rollout_ready


def test_idle_engine_waits_then_scales_to_zero() -> None:
    fresh = plan([], [ready("p1")])
    assert fresh.status_patch["phase"] == "Idle" and fresh.replicas == 1
    assert fresh.status_patch["idleSince"] == "2026-11-25T12:00:00Z"
    later = plan([], [ready("p1")], status={"idleSince": "2026-11-25T11:54:00Z"})
    assert later.replicas == 0 and not later.delete_engine
    assert later.status_patch["phase"] == "Idle"  # ScaledDown once the pod is gone


def test_delete_policy_removes_only_deletable_engines() -> None:
    idle = {"idleSince": "2026-11-25T11:00:00Z"}
    ours = d.Scaling(0, 1, 2, 300, "Delete", True)
    theirs = d.Scaling(0, 1, 2, 300, "Delete", False)
    assert plan([], [], current=0, status=idle, scaling=ours).delete_engine
    admin = plan([], [], current=1, status=idle, scaling=theirs)
    assert not admin.delete_engine and admin.replicas == 0
    assert admin.status_patch["phase"] == "ScaledDown"


def test_a_new_session_clears_idleness_and_scales_up_from_zero() -> None:
    result = plan([session("s", 1)], [], current=0, status={"idleSince": "2026-11-25T10:00:00Z"})
    assert result.replicas == 1 and result.status_patch["idleSince"] is None
    assert result.status_patch["lastSessionTime"] == "2026-11-25T11:59:59Z"


def test_an_invalid_engine_fails_its_sessions_and_keeps_its_replicas() -> None:
    result = plan([session("s")], [ready("p1")], current=3, scaling=None, error="bad name")
    assert result.replicas == 3 and not result.delete_engine
    assert result.session_patches["s"]["phase"] == "Failed"
    assert result.status_patch["phase"] == "Failed"
    reasons = {cond["type"]: cond["reason"] for cond in result.status_patch["conditions"]}
    assert reasons == {c.READY: c.INVALID_SPEC, c.RECONCILED: c.INVALID_SPEC}


def test_status_patch_sets_changes_and_removes_keys() -> None:
    assert d.status_patch({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5}) == {"b": 5, "c": None}


def test_set_condition_moves_time_only_on_a_flip() -> None:
    ready_false = c.condition(c.READY, False, c.LOADING, "loading")
    conds, changed = c.set_condition(None, ready_false, "t1")
    assert changed and conds == [{**ready_false, "lastTransitionTime": "t1"}]
    same, changed = c.set_condition(conds, ready_false, "t2")
    assert not changed and same == conds
    reworded, changed = c.set_condition(conds, c.condition(c.READY, False, c.PULLING), "t3")
    assert changed and reworded[0]["lastTransitionTime"] == "t1"
    flipped, changed = c.set_condition(conds, c.condition(c.READY, True, c.ASSIGNED), "t4")
    assert changed and flipped[0]["lastTransitionTime"] == "t4"
    both, _ = c.set_condition(flipped, c.condition(c.RECONCILED, True, c.SUCCEEDED), "t5")
    assert [x["type"] for x in both] == [c.READY, c.RECONCILED]
    assert both[1]["lastTransitionTime"] == "t5"


def busy(name: str, ip: str, sessions: int) -> d.PodView:
    return dataclasses.replace(ready(name, ip), busy=sessions > 0, cost=sessions)


def test_a_pod_is_marked_busy_when_it_gets_sessions_and_idle_when_they_go() -> None:
    result = plan([session("s")], [ready("p1")])
    assert result.session_patches["s"]["pod"] == "p1"
    assert result.pod_patches == {"p1": d.pod_marks(1)}
    meta = d.pod_marks(1)["metadata"]
    assert meta["labels"] == {names.LABEL_BUSY: "true"}
    assert meta["annotations"] == {
        names.DELETION_COST: "1",
        names.SAFE_TO_EVICT: "false",
        names.DO_NOT_DISRUPT: "true",
    }
    idle = plan([], [busy("p1", "10.0.0.1", 1)])
    assert idle.pod_patches == {"p1": d.pod_marks(0)}
    cleared = d.pod_marks(0)["metadata"]
    assert set(cleared["labels"].values()) | set(cleared["annotations"].values()) == {None}
    # More sessions on a pod already busy: no write (costs are settled before a scale-down).
    more = plan([session("a", pod="p1", phase="Active"), session("b")], [busy("p1", "10.0.0.1", 1)])
    assert more.pod_patches == {} and more.rollout_ready is False


def test_a_scale_down_waits_until_every_pod_shows_its_session_count() -> None:
    # Three sessions on p2, which carries an old count; p1 is empty: one replica is enough.
    sessions = [session(n, pod="p2", phase="Active") for n in "abc"]
    pods = [ready("p1", "10.0.0.1"), busy("p2", "10.0.0.2", 1)]
    scaling = d.Scaling(0, 2, 4, 300, "ScaleToZero", True)
    first = plan(sessions, pods, current=2, scaling=scaling)
    assert first.replicas == 2  # not yet: the ReplicaSet could pick p2
    assert first.pod_patches == {"p2": d.pod_marks(3)} and not first.rollout_ready
    assert first.status_patch["replicas"] == 2
    pods[1] = busy("p2", "10.0.0.2", 3)  # the pods now show it
    second = plan(sessions, pods, current=2, scaling=scaling)
    assert second.replicas == 1 and second.pod_patches == {}
    # Growing never waits.
    grow = plan([*sessions, session("d"), session("e")], pods[:1], current=1, scaling=scaling)
    assert grow.replicas == 2


def test_a_rollout_writes_the_session_counts_first() -> None:
    sessions = [session(n, pod="p1", phase="Active") for n in "ab"]
    stale = [busy("p1", "10.0.0.1", 1)]
    assert plan(sessions, stale).pod_patches == {}  # no rollout: counts may lag
    pending = plan(sessions, stale, rollout=True)
    assert pending.pod_patches == {"p1": d.pod_marks(2)} and not pending.rollout_ready
    assert plan(sessions, [busy("p1", "10.0.0.1", 2)], rollout=True).rollout_ready


SPEC, TEMPLATE = "spec-1", "template-1"


@pytest.mark.parametrize(
    ("annotations", "busy_engine", "changed", "action"),
    [
        ({names.SPEC_HASH: SPEC, names.TEMPLATE_HASH: TEMPLATE}, True, False, None),
        ({names.SPEC_HASH: "spec-0", names.TEMPLATE_HASH: TEMPLATE}, True, False, d.REPLACE),
        # An operator upgrade builds another template for the same spec: idle engines only.
        ({names.SPEC_HASH: SPEC, names.TEMPLATE_HASH: "template-0"}, True, False, None),
        ({names.SPEC_HASH: SPEC, names.TEMPLATE_HASH: "template-0"}, False, False, d.REPLACE),
        # A Deployment from before the hashes: adopted when busy, unless its spec changed.
        ({}, True, False, d.ADOPT),
        ({}, True, True, d.REPLACE),
        ({}, False, False, d.REPLACE),
    ],
)
def test_template_action(
    annotations: dict, busy_engine: bool, changed: bool, action: str | None
) -> None:
    assert d.template_action(annotations, SPEC, TEMPLATE, busy_engine, changed) == action


LISTING = d.Listing(started=100.0, uids=frozenset({"listed"}))


@pytest.mark.parametrize(
    ("uid", "indexed_at", "listing", "current"),
    [
        ("gone", 50.0, None, True),  # no re-list yet: the index is all there is
        ("listed", 50.0, LISTING, True),
        ("gone", 50.0, LISTING, False),  # deleted during a watch gap: the re-list drops it
        ("new", 100.5, LISTING, True),  # created after the re-list began
    ],
)
def test_index_entries_stand_until_a_re_list_shows_them_gone(
    uid: str, indexed_at: float, listing: d.Listing | None, current: bool
) -> None:
    assert d.is_current(uid, indexed_at, listing) is current


def test_pod_view_reads_the_operators_marks() -> None:
    body = pod(conditions=[SCHEDULED])
    assert (d.pod_view(body).busy, d.pod_view(body).cost) == (False, 0)
    body["metadata"]["labels"] = {names.LABEL_BUSY: "true"}
    body["metadata"]["annotations"] = {names.DELETION_COST: "3"}
    assert (d.pod_view(body).busy, d.pod_view(body).cost) == (True, 3)
    body["metadata"]["annotations"] = {names.DELETION_COST: "many"}  # someone else's value
    assert d.pod_view(body).cost == 0


def test_ready_endpoints_are_the_sorted_urls_of_ready_pods_only() -> None:
    pods = [
        ready("p1", "10.0.0.9"),
        ready("p2", "10.0.0.10"),
        d.PodView("p3", c.LOADING, "loading", "http://10.0.0.3:8000"),
        d.PodView("p4", d.POD_TERMINATING, "pod is terminating"),
    ]
    assert d.ready_endpoints(pods) == ["http://10.0.0.10:8000", "http://10.0.0.9:8000"]
    assert d.ready_endpoints([]) == []


def test_the_engine_status_lists_ready_endpoints_and_rewrites_them_only_on_a_change() -> None:
    pods = [ready("p2", "10.0.0.2"), ready("p1", "10.0.0.1")]
    first = plan([], pods, current=2)
    both = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert first.status_patch[d.READY_ENDPOINTS] == both
    status = {**first.status_patch}
    assert (
        d.READY_ENDPOINTS
        not in plan([], list(reversed(pods)), current=2, status=status).status_patch
    )
    going = [pods[1], d.PodView("p2", d.POD_TERMINATING, "pod is terminating")]
    assert plan([], going, current=2, status=status).status_patch[d.READY_ENDPOINTS] == both[:1]


@pytest.mark.parametrize(
    "gone",
    [d.PodView("p1", d.POD_TERMINATING, "pod is terminating"), None],
    ids=["terminating", "deleted"],
)
def test_a_session_on_a_pod_that_goes_moves_to_another_ready_pod(gone: d.PodView | None) -> None:
    s = session("s", pod="p1", phase="Active", endpoint="http://10.0.0.1:8000")
    pods = [ready("p2", "10.0.0.2"), *([gone] if gone else [])]
    result = plan([s], pods, current=2)
    patch = result.session_patches["s"]  # still Active: no phase in the patch
    assert (patch["pod"], patch["endpoint"]) == ("p2", "http://10.0.0.2:8000")
    assert "phase" not in patch and result.reassigned == {"s"}
    assert result.status_patch[d.READY_ENDPOINTS] == ["http://10.0.0.2:8000"]


def test_a_session_leaves_a_pod_that_is_not_ready_for_a_ready_one() -> None:
    """Pinning is placement: a crashed pod's session goes to a ready pod with room, and the
    crashed pod loses its busy marks (the ReplicaSet may remove it first)."""
    s = session("s", pod="p1", phase="Active", endpoint="http://10.0.0.1:8000")
    crashed = dataclasses.replace(d.PodView("p1", c.CRASHING, "exit 137"), busy=True, cost=1)
    result = plan([s], [crashed, ready("p2", "10.0.0.2")], current=2)
    patch = result.session_patches["s"]
    assert (patch["pod"], patch["endpoint"]) == ("p2", "http://10.0.0.2:8000")
    assert "phase" not in patch and result.reassigned == {"s"}
    assert result.pod_patches == {"p1": d.pod_marks(0), "p2": d.pod_marks(1)}
    # With no ready pod that has room, it keeps the pod that may come back, and waits.
    full = [session(f"f{i}", pod="p2", phase="Active") for i in range(2)]
    waiting = plan([s, *full], [crashed, ready("p2", "10.0.0.2")], current=2)
    assert "pod" not in waiting.session_patches["s"]
    assert waiting.session_patches["s"]["phase"] == "Pending"


@pytest.mark.parametrize(
    ("pod", "listed", "pinned", "matters"),
    [
        (ready("p1"), False, False, True),  # a new ready pod: list it, place waiting sessions
        (ready("p1"), True, True, False),  # nothing changes
        (d.PodView("p1", d.POD_TERMINATING, ""), True, False, True),  # unlist it at once
        (d.PodView("p1", d.POD_TERMINATING, ""), False, True, True),  # move its sessions
        (d.PodView("p1", c.CRASHING, ""), False, True, True),
        (d.PodView("p1", c.LOADING, ""), False, False, False),  # a pod still starting
    ],
)
def test_pod_event_matters(pod: d.PodView, listed: bool, pinned: bool, matters: bool) -> None:
    endpoint = "http://10.0.0.1:8000"
    status = {d.READY_ENDPOINTS: [endpoint] if listed else []}
    sessions = [
        session("s", pod="p1" if pinned else "p9"),
        session("gone", pod="p1", deleting=True),
    ]
    assert d.pod_event_matters(pod, endpoint, status, sessions) is matters
