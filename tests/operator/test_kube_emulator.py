"""The test support's own tests: what the emulator adds to kmock behaves like an API server.

Every request goes over HTTP to the emulator on 127.0.0.1, under RBAC unless a test opts out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import rbac
from tests.support.chart_rbac import chart_rbac
from tests.support.cluster import Cluster, KubeClient, wait_for
from tests.support.kube_emulator import RunningEmulator, json_patch, label_matcher, merge_patch
from tests.support.rbac import Attributes, User

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"containers": []}}


@pytest.fixture
def api(kube_api: RunningEmulator) -> Iterator[KubeClient]:
    client = KubeClient(kube_api.url)
    yield client
    client.close()


def watch(api: KubeClient, plural: str, params: dict[str, str], count: int) -> list[dict]:
    """Collect ``count`` events (or fewer if the stream ends) from a watch."""
    events: list[dict] = []
    with api.http.stream(
        "GET", api.path(plural), params={"watch": "true", **params}, timeout=10
    ) as response:
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) == count:
                break
    return events


def test_discovery_serves_builtins_and_crds(api: KubeClient) -> None:
    assert api.http.get("/version").status_code == 200
    names = [r["name"] for r in api.http.get("/apis/tutor.vts.dev/v1alpha1").json()["resources"]]
    assert {"tutorsessions", "tutorsessions/status", "tutorengines"} <= set(names)
    kinds = {r["name"] for r in api.http.get("/apis/apps/v1").json()["resources"]}
    assert "deployments/status" in kinds
    assert api.http.get("/apis/nope.example/v1/things").status_code == 404


def test_create_stamps_metadata_and_conflicts(api: KubeClient) -> None:
    created = api.create("pods", pod("a"))
    assert created.status_code == 201
    meta = created.json()["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert meta["namespace"] == "tutors" and created.json()["kind"] == "Pod"
    again = api.create("pods", pod("a"))
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
    generated = api.create("pods", {"metadata": {"generateName": "web-"}, "spec": {}}).json()
    assert (
        generated["metadata"]["name"].startswith("web-") and len(generated["metadata"]["name"]) == 9
    )
    assert api.http.get(api.path("pods", "missing")).status_code == 404


def test_patches_and_optimistic_concurrency(api: KubeClient) -> None:
    rv = api.create("pods", pod("a", app="x")).json()["metadata"]["resourceVersion"]
    merged = api.patch("pods", "a", {"metadata": {"labels": {"app": None, "tier": "gpu"}}}).json()
    assert merged["metadata"]["labels"] == {"tier": "gpu"}
    assert merged["metadata"]["resourceVersion"] != rv
    stale = api.patch("pods", "a", {"metadata": {"resourceVersion": rv, "labels": {"a": "b"}}})
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    test_op = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}]
    failed = api.http.patch(api.path("pods", "a"), json=test_op, headers=JSON_PATCH)
    assert failed.status_code == 422
    current = merged["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": current},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]
    applied = api.http.patch(api.path("pods", "a"), json=ops, headers=JSON_PATCH)
    assert applied.json()["metadata"]["finalizers"] == ["x/y"]
    unchanged = api.patch("pods", "a", {"metadata": {"labels": {"tier": "gpu"}}}).json()
    assert unchanged["metadata"]["resourceVersion"] == applied.json()["metadata"]["resourceVersion"]


def test_status_is_a_separate_subresource(api: KubeClient) -> None:
    api.create("pods", {**pod("a"), "status": {"phase": "Running"}})
    assert "status" not in api.get("pods", "a")  # status is ignored on create
    api.patch("pods", "a", {"status": {"phase": "Running"}, "spec": {"nodeName": "n"}})
    assert "status" not in api.get("pods", "a")
    both = api.patch(
        "pods", "a", {"status": {"phase": "Running"}, "spec": {"nodeName": "m"}}, "status"
    )
    assert both.json()["status"] == {"phase": "Running"}
    assert both.json()["spec"]["nodeName"] == "n" and both.json()["metadata"]["generation"] == 2


def test_selectors_on_lists(api: KubeClient) -> None:
    for name, labels in {"a": {"app": "e", "t": "1"}, "b": {"app": "e"}, "c": {"app": "g"}}.items():
        api.create("pods", pod(name, **labels))
    names = lambda items: sorted(i["metadata"]["name"] for i in items)  # noqa: E731
    assert names(api.list("pods", "app=e")) == ["a", "b"]
    assert names(api.list("pods", "app=e,!t")) == ["b"]
    assert names(api.list("pods", "app in (e, g),t notin (1)")) == ["b", "c"]
    fields = api.http.get(api.path("pods"), params={"fieldSelector": "metadata.name=c"}).json()
    assert names(fields["items"]) == ["c"] and fields["kind"] == "PodList"


def test_label_matcher_table() -> None:
    labels = {"a": "1", "b": "2"}
    for selector, expected in [
        ("", True), ("a", True), ("!a", False), ("a=1", True), ("a==2", False),
        ("a!=2", True), ("b in (1,2)", True), ("b notin (2)", False), ("a=1,b=3", False),
    ]:  # fmt: skip
        assert label_matcher(selector)(labels) is expected, selector


def test_watch_resumes_from_a_resource_version_and_filters(api: KubeClient) -> None:
    api.create("pods", pod("a", app="e"))
    listing = api.http.get(api.path("pods")).json()
    rv = listing["metadata"]["resourceVersion"]
    api.patch("pods", "a", {"metadata": {"labels": {"app": "other"}}})
    api.create("pods", pod("b", app="e"))
    api.delete("pods", "b")
    events = watch(api, "pods", {"resourceVersion": rv, "labelSelector": "app=e"}, 3)
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen == [("DELETED", "a"), ("ADDED", "b"), ("DELETED", "b")]
    replay = watch(
        api, "pods", {"timeoutSeconds": "1"}, 10
    )  # no version: current objects, then ends
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replay] == [("ADDED", "a")]


def test_watch_streams_live_events(api: KubeClient) -> None:
    rv = api.http.get(api.path("pods")).json()["metadata"]["resourceVersion"]
    timer = threading.Timer(0.3, lambda: api.create("pods", pod("late")))
    timer.start()
    events = watch(api, "pods", {"resourceVersion": rv, "timeoutSeconds": "5"}, 1)
    timer.join()
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "late"


def test_finalizers_hold_deletion(api: KubeClient) -> None:
    api.create("pods", {**pod("a"), "metadata": {"name": "a", "finalizers": ["x/y"]}})
    marked = api.delete("pods", "a").json()
    assert marked["metadata"]["deletionTimestamp"] and api.get("pods", "a") is not None
    assert api.patch("pods", "a", {"metadata": {"finalizers": ["x/y", "z/w"]}}).status_code == 422
    api.patch("pods", "a", {"metadata": {"finalizers": None}})
    assert api.get("pods", "a") is None


def test_owner_references_cascade(api: KubeClient) -> None:
    owner = api.create("services", {"metadata": {"name": "owner"}, "spec": {}}).json()
    ref = {"apiVersion": "v1", "kind": "Service", "name": "owner", "uid": owner["metadata"]["uid"]}
    child = api.create(
        "pods", {**pod("child"), "metadata": {"name": "child", "ownerReferences": [ref]}}
    )
    grandchild_ref = {**ref, "kind": "Pod", "name": "child", "uid": child.json()["metadata"]["uid"]}
    api.create(
        "pods",
        {
            **pod("grandchild"),
            "metadata": {"name": "grandchild", "ownerReferences": [grandchild_ref]},
        },
    )
    api.create("pods", pod("stranger"))
    api.delete("services", "owner")
    assert [p["metadata"]["name"] for p in api.list("pods")] == ["stranger"]


def test_custom_resources_are_defaulted_pruned_and_validated(api: KubeClient) -> None:
    body = {
        "metadata": {"name": "s"},
        "spec": {"tutorId": 1, "studentId": 2, "tokenHash": "a" * 64, "token": "leak"},
    }
    created = api.create("tutorsessions", body).json()
    assert created["spec"] == {
        "tutorId": 1,
        "studentId": 2,
        "tokenHash": "a" * 64,
        "timeoutSeconds": 3600,
    }
    bad = api.patch("tutorsessions", "s", {"status": {"phase": "Sleeping"}}, "status")
    assert bad.status_code == 422 and "status.phase" in bad.json()["message"]
    engine = api.create("tutorengines", {"metadata": {"name": "tutor-1"}, "spec": {"tutorId": 1}})
    assert engine.status_code == 201
    renamed = api.patch("tutorengines", "tutor-1", {"spec": {"tutorId": 2}})
    assert renamed.status_code == 422 and "tutorId is immutable" in renamed.json()["message"]


def test_posting_a_crd_registers_it(kube_api: RunningEmulator) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    with KubeClient(kube_api.url).http as http:
        assert (
            http.post(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd
            ).status_code
            == 201
        )
        path = "/apis/example.com/v1/namespaces/tutors/widgets"
        assert (
            http.post(path, json={"metadata": {"name": "w"}, "spec": {"size": 0}}).status_code
            == 422
        )
        assert (
            http.post(path, json={"metadata": {"name": "w"}, "spec": {"size": 2}}).status_code
            == 201
        )


def test_unsupported_cel_rules_are_refused(kube_api: RunningEmulator) -> None:
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.size() > 1"}]}
    crd = {
        "spec": {
            "group": "example.com",
            "names": {"kind": "Gadget", "plural": "gadgets"},
            "versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}],
        }
    }
    with pytest.raises(ValueError, match="unsupported CEL rule"):
        kube_api.emulator.register_crd(crd)


def test_patch_helpers() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}
    }
    doc = {"l": [1, 2], "m": {"x": 1}}
    ops = [
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "remove", "path": "/l/0"},
        {"op": "replace", "path": "/m/x", "value": 5},
        {"op": "move", "from": "/m/x", "path": "/y"},
        {"op": "copy", "from": "/y", "path": "/m/z"},
    ]
    assert json_patch(doc, ops) == {"l": [2, 3], "m": {"z": 5}, "y": 5}
    with pytest.raises(ValueError):
        json_patch(doc, [{"op": "replace", "path": "/nope/x", "value": 1}])


# -- authentication and RBAC ------------------------------------------------------------------

GATEWAY_SA = "system:serviceaccount:tutors:tutor-tutor-serving-gateway"
RBAC_V1 = "/apis/rbac.authorization.k8s.io/v1/namespaces/tutors"


def session_body(name: str) -> dict[str, Any]:
    spec = {"tutorId": 1, "studentId": 2, "tokenHash": "a" * 64}
    return {"metadata": {"name": name}, "spec": spec}


def test_requests_without_a_valid_token_are_anonymous_or_unauthorized(
    kube_api: RunningEmulator,
) -> None:
    anonymous = KubeClient(kube_api.url, token=None)
    denied = anonymous.http.get(anonymous.path("tutorsessions", "x"))
    assert denied.status_code == 403
    assert denied.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'tutorsessions.tutor.vts.dev "x" is forbidden: User "system:anonymous" cannot '
        'get resource "tutorsessions" in API group "tutor.vts.dev" in the namespace "tutors"',
        "reason": "Forbidden",
        "details": {"name": "x", "group": "tutor.vts.dev", "kind": "tutorsessions"},
        "code": 403,
    }
    assert anonymous.http.get("/version").status_code == 200  # system:public-info-viewer
    discovery = anonymous.http.get("/apis")
    assert discovery.status_code == 403
    assert (
        discovery.json()["message"] == 'forbidden: User "system:anonymous" cannot get path "/apis"'
    )
    bogus = KubeClient(kube_api.url, token="not-a-token")
    unauthorized = bogus.http.get(bogus.path("pods"))
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    basic = bogus.http.get(bogus.path("pods"), headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401


def test_components_act_as_their_chart_service_accounts(
    kube_api: RunningEmulator, api: KubeClient
) -> None:
    gateway = KubeClient(kube_api.url, token=kube_api.tokens["gateway"])
    assert gateway.http.get("/apis/tutor.vts.dev/v1alpha1").status_code == 200  # discovery
    assert gateway.create("tutorsessions", session_body("s")).status_code == 201
    assert gateway.list("tutorsessions")[0]["metadata"]["name"] == "s"
    patched = gateway.patch("tutorsessions", "s", {"status": {"phase": "Pending"}}, "status")
    assert patched.status_code == 200
    # The chart gives the gateway no patch on the main resource and nothing on deployments.
    spec_patch = gateway.patch("tutorsessions", "s", {"metadata": {"labels": {"a": "b"}}})
    assert spec_patch.status_code == 403
    assert spec_patch.json()["message"] == (
        f'tutorsessions.tutor.vts.dev "s" is forbidden: User "{GATEWAY_SA}" cannot patch '
        'resource "tutorsessions" in API group "tutor.vts.dev" in the namespace "tutors"'
    )
    deployments = gateway.http.get(gateway.path("deployments"))
    assert deployments.status_code == 403
    assert deployments.json()["message"] == (
        f'deployments.apps is forbidden: User "{GATEWAY_SA}" cannot list resource '
        '"deployments" in API group "apps" in the namespace "tutors"'
    )
    elsewhere = gateway.http.get("/apis/tutor.vts.dev/v1alpha1/namespaces/other/tutorsessions")
    assert elsewhere.status_code == 403
    assert elsewhere.json()["message"].endswith('in the namespace "other"')
    cluster_wide = gateway.http.get("/apis/tutor.vts.dev/v1alpha1/tutorsessions")
    assert cluster_wide.json()["message"].endswith("at the cluster scope")
    # The operator's token is the operator Deployment's ServiceAccount.
    operator = KubeClient(kube_api.url, token=kube_api.tokens["operator"])
    denied = operator.http.get(operator.path("secrets"))
    assert denied.status_code == 403
    assert (
        'User "system:serviceaccount:tutors:tutor-tutor-serving-operator"'
        in denied.json()["message"]
    )
    # A deleted ServiceAccount's token no longer authenticates.
    api.http.delete(api.path("serviceaccounts", "tutor-tutor-serving-gateway"))
    assert gateway.http.get(gateway.path("tutorsessions")).status_code == 401


def test_rules_match_verbs_subresources_and_resource_names(
    kube_api: RunningEmulator, api: KubeClient
) -> None:
    kube_api.call(kube_api.emulator.add_token, "alice-token", User("alice", ("devs",)))
    role = {
        "metadata": {"name": "narrow"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch"],
             "resourceNames": ["mine"]},
            {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["delete"]},
        ],
    }  # fmt: skip
    binding = {
        "metadata": {"name": "narrow"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "narrow"},
        "subjects": [{"kind": "Group", "name": "devs"}],
    }
    assert api.http.post(f"{RBAC_V1}/roles", json=role).status_code == 201
    assert api.http.post(f"{RBAC_V1}/rolebindings", json=binding).status_code == 201
    for name in ("mine", "theirs"):
        api.create("pods", pod(name))
    api.create("services", {"metadata": {"name": "svc"}, "spec": {}})
    alice = KubeClient(kube_api.url, token="alice-token")
    assert alice.get("pods", "mine") is not None
    assert alice.http.get(alice.path("pods", "theirs")).status_code == 403
    assert alice.http.get(alice.path("pods")).status_code == 403  # a list names nothing
    by_name = {"watch": "true", "fieldSelector": "metadata.name=mine", "timeoutSeconds": "1"}
    assert alice.http.get(alice.path("pods"), params=by_name).status_code == 200
    assert alice.patch("pods", "mine", {"status": {"phase": "Running"}}, "status").is_success
    assert alice.patch("pods", "mine", {"metadata": {"labels": {"a": "b"}}}).status_code == 403
    assert alice.http.delete(alice.path("services")).status_code == 403  # deletecollection
    assert alice.delete("services", "svc").status_code == 200
    # Bindings take effect, and stop, as they are written.
    assert api.http.delete(f"{RBAC_V1}/rolebindings/narrow").status_code == 200
    assert alice.http.get(alice.path("pods", "mine")).status_code == 403


def test_cluster_roles_bind_per_namespace_or_cluster_wide(
    kube_api: RunningEmulator, api: KubeClient
) -> None:
    kube_api.call(kube_api.emulator.add_token, "bob-token", User("bob"))
    reader = {
        "metadata": {"name": "reader"},
        "rules": [{"apiGroups": ["", "apps"], "resources": ["pods", "deployments"],
                   "verbs": ["list"]}],
    }  # fmt: skip
    api.http.post("/apis/rbac.authorization.k8s.io/v1/clusterroles", json=reader)
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"}
    local = {
        "metadata": {"name": "r"},
        "roleRef": ref,
        "subjects": [{"kind": "User", "name": "bob"}],
    }
    api.http.post(f"{RBAC_V1}/rolebindings", json=local)
    bob = KubeClient(kube_api.url, token="bob-token")
    assert bob.http.get(bob.path("pods")).status_code == 200
    assert bob.http.get("/api/v1/namespaces/other/pods").status_code == 403
    assert bob.http.get("/api/v1/pods").status_code == 403
    api.http.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json=local)
    assert bob.http.get("/api/v1/namespaces/other/pods").status_code == 200
    assert bob.http.get("/apis/apps/v1/deployments").status_code == 200
    assert bob.http.get(bob.path("pods", "x")).status_code == 403  # list, not get


@pytest.mark.parametrize("kube_api", [{"rbac": False}], indirect=True)
def test_rbac_can_be_turned_off(kube_api: RunningEmulator) -> None:
    anonymous = KubeClient(kube_api.url, token=None)
    assert anonymous.create("pods", pod("a")).status_code == 201
    bogus = KubeClient(kube_api.url, token="not-a-token")
    assert bogus.http.get(bogus.path("pods")).status_code == 401  # authentication still runs


def test_rule_matching_table() -> None:
    user = User("u")

    def allowed(rule: dict[str, Any], **request: Any) -> bool:
        request.setdefault("resource", "tutorsessions")
        request.setdefault("api_group", "tutor.vts.dev")
        return rbac.rule_allows(rule, Attributes(user, **request))

    rule = {"apiGroups": ["tutor.vts.dev"], "resources": ["tutorsessions"], "verbs": ["get"]}
    assert allowed(rule, verb="get")
    assert not allowed(rule, verb="list")
    assert not allowed(rule, verb="get", api_group="")
    assert not allowed(rule, verb="get", subresource="status")  # a subresource is separate
    assert allowed(
        {**rule, "resources": ["tutorsessions/status"]}, verb="get", subresource="status"
    )
    assert allowed({**rule, "resources": ["*/status"]}, verb="get", subresource="status")
    assert not allowed({**rule, "resources": ["tutorsessions/*"]}, verb="get", subresource="status")
    assert allowed({**rule, "resources": ["*"]}, verb="get", subresource="status")
    assert allowed({**rule, "verbs": ["*"]}, verb="deletecollection")
    named = {**rule, "resourceNames": ["a"]}
    assert allowed(named, verb="get", name="a") and not allowed(named, verb="get", name="b")
    assert not allowed({**named, "verbs": ["create"]}, verb="create")  # create names nothing
    urls = {"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]}
    assert rbac.rule_allows(urls, Attributes(user, "get", False, path="/apis/apps/v1"))
    assert not rbac.rule_allows(urls, Attributes(user, "get", False, path="/api"))
    assert not rbac.rule_allows(urls, Attributes(user, "post", False, path="/version"))
    assert [rbac.request_verb(m, named=n, watch=w) for m, n, w in [
        ("GET", True, False), ("GET", False, False), ("GET", False, True), ("POST", False, False),
        ("PUT", True, False), ("PATCH", True, False), ("DELETE", True, False),
        ("DELETE", False, False),
    ]] == list(rbac.VERBS)  # fmt: skip


def test_the_chart_is_rendered_with_the_real_helm_engine() -> None:
    chart = chart_rbac("tutors")
    kinds = {m["kind"] for m in chart.manifests}
    assert {"ServiceAccount", "Role", "RoleBinding"} <= kinds
    assert set(chart.accounts) >= {"operator", "gateway"}
    names = {m["metadata"]["name"] for m in chart.manifests if m["kind"] == "ServiceAccount"}
    assert set(chart.accounts.values()) <= names
    assert not any("cleanup" in name for name in names)  # hooks exist only while they run


# -- 410 Gone, bookmarks, timeouts, dropped watches -------------------------------------------


@pytest.mark.parametrize("kube_api", [{"history_size": 3}], indirect=True)
def test_a_watch_resuming_from_before_the_history_gets_410(
    kube_api: RunningEmulator, api: KubeClient
) -> None:
    start = api.http.get(api.path("pods")).json()["metadata"]["resourceVersion"]
    for i in range(4):
        api.create("pods", pod(f"p{i}"))
    events = watch(api, "pods", {"resourceVersion": start}, 5)
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"].startswith(f"too old resource version: {start} (")
    # Within the history a watch resumes; other resources' events do not push pods out.
    recent = api.list("pods")[1]["metadata"]["resourceVersion"]
    for i in range(5):
        api.create("services", {"metadata": {"name": f"s{i}"}, "spec": {}})
    resumed = watch(api, "pods", {"resourceVersion": recent, "timeoutSeconds": "1"}, 5)
    assert [e["object"]["metadata"]["name"] for e in resumed] == ["p2", "p3"]


def test_compaction_expires_every_older_version(kube_api: RunningEmulator, api: KubeClient) -> None:
    api.create("pods", pod("a", v="1"))
    before = api.http.get(api.path("pods")).json()["metadata"]["resourceVersion"]
    api.patch("pods", "a", {"metadata": {"labels": {"v": "2"}}})
    exact = {"resourceVersion": before, "resourceVersionMatch": "Exact"}
    snapshot = api.http.get(api.path("pods"), params=exact).json()
    assert snapshot["metadata"]["resourceVersion"] == before
    assert snapshot["items"][0]["metadata"]["labels"] == {"v": "1"}  # as it was then
    kube_api.compact()
    assert watch(api, "pods", {"resourceVersion": before}, 2)[0]["object"]["code"] == 410
    expired = api.http.get(api.path("pods"), params=exact)
    assert expired.status_code == 410 and expired.json()["reason"] == "Expired"
    not_older = {"resourceVersion": before, "resourceVersionMatch": "NotOlderThan"}
    assert api.http.get(api.path("pods"), params=not_older).json()["items"][0]["metadata"][
        "labels"
    ] == {"v": "2"}
    current = api.http.get(api.path("pods")).json()["metadata"]["resourceVersion"]
    api.delete("pods", "a")
    after = watch(api, "pods", {"resourceVersion": current}, 1)
    assert after[0]["type"] == "DELETED"  # versions after the compaction still resume


@pytest.mark.parametrize("kube_api", [{"bookmark_interval": 0.2}], indirect=True)
def test_bookmarks_only_when_allowed_and_timeout_seconds_ends_a_watch(
    kube_api: RunningEmulator, api: KubeClient
) -> None:
    api.create("pods", pod("a"))
    rv = api.http.get(api.path("pods")).json()["metadata"]["resourceVersion"]
    params = {"resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "5"}
    bookmark = watch(api, "pods", params, 1)[0]
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["kind"] == "Pod"
    assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(rv)
    assert watch(api, "pods", {"resourceVersion": rv, "timeoutSeconds": "1"}, 5) == []


def wait_for_watches(kube_api: RunningEmulator, count: int) -> None:
    def open_watches() -> int:
        return kube_api.call(lambda: len(kube_api.emulator._watchers))

    wait_for(lambda: open_watches() == count, 10, f"{count} open watches")


def test_drop_watches_ends_or_cuts_them(kube_api: RunningEmulator, api: KubeClient) -> None:
    outcome: dict[str, Any] = {}

    def stream(key: str) -> None:
        try:
            outcome[key] = watch(api, "pods", {"resourceVersion": "1"}, 100)
        except httpx.HTTPError as exc:
            outcome[key] = exc

    clean = threading.Thread(target=stream, args=("clean",))
    clean.start()
    wait_for_watches(kube_api, 1)
    assert kube_api.drop_watches("services") == 0
    assert kube_api.drop_watches("pods") == 1
    clean.join(10)
    assert outcome["clean"] == []
    cut = threading.Thread(target=stream, args=("cut",))
    cut.start()
    wait_for_watches(kube_api, 1)
    assert kube_api.drop_watches(abort=True) == 1
    cut.join(10)
    assert isinstance(outcome["cut"], httpx.HTTPError)


# -- patches, deletion, binding ---------------------------------------------------------------


def test_strategic_merge_is_refused_on_custom_resources_only(api: KubeClient) -> None:
    api.create("tutorsessions", session_body("s"))
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    body = {"metadata": {"labels": {"a": "b"}}}
    refused = api.http.patch(api.path("tutorsessions", "s"), json=body, headers=strategic)
    assert refused.status_code == 415
    assert refused.json()["reason"] == "UnsupportedMediaType"
    assert refused.json()["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )
    api.create("pods", pod("p"))
    accepted = api.http.patch(api.path("pods", "p"), json=body, headers=strategic)
    assert accepted.status_code == 200 and accepted.json()["metadata"]["labels"] == {"a": "b"}


def test_scheduled_pods_are_deleted_gracefully(api: KubeClient) -> None:
    api.create("pods", {**pod("p"), "spec": {"containers": [], "terminationGracePeriodSeconds": 7}})
    assert api.delete("pods", "p").status_code == 200
    assert api.get("pods", "p") is None  # never scheduled: deleted at once
    api.create("pods", pod("p"))
    binding = {"target": {"kind": "Node", "name": "node-1"}}
    assert api.http.post(api.path("pods", "p", "binding"), json=binding).status_code == 201
    assert api.http.post(api.path("pods", "p", "binding"), json=binding).status_code == 409
    assert api.get("pods", "p")["spec"]["nodeName"] == "node-1"
    terminating = api.delete("pods", "p").json()
    assert terminating["metadata"]["deletionTimestamp"]
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 30
    assert api.get("pods", "p") is not None  # until its kubelet is done
    wrong = {"gracePeriodSeconds": 0, "preconditions": {"uid": "nope"}}
    stale = api.http.request("DELETE", api.path("pods", "p"), json=wrong)
    assert stale.status_code == 409 and "Precondition failed" in stale.json()["message"]
    uid = terminating["metadata"]["uid"]
    done = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
    assert api.http.request("DELETE", api.path("pods", "p"), json=done).status_code == 200
    assert api.get("pods", "p") is None


def test_delete_collection_honours_selectors(api: KubeClient) -> None:
    for name, app in (("a", "x"), ("b", "x"), ("c", "y")):
        api.create("pods", pod(name, app=app))
    gone = api.http.delete(api.path("pods"), params={"labelSelector": "app=x"})
    assert sorted(p["metadata"]["name"] for p in gone.json()["items"]) == ["a", "b"]
    assert [p["metadata"]["name"] for p in api.list("pods")] == ["c"]


# -- fault injection --------------------------------------------------------------------------


def test_injected_faults_hit_the_next_matching_writes(
    kube_api: RunningEmulator, api: KubeClient
) -> None:
    api.create("tutorsessions", session_body("s"))
    conflicts = kube_api.inject("conflict", 2, methods={"PATCH"}, resource="tutorsessions/status")
    status = {"status": {"phase": "Pending"}}
    assert api.patch("tutorsessions", "s", {"metadata": {"labels": {"a": "b"}}}).is_success
    anonymous = KubeClient(kube_api.url, token=None)  # denied before any fault
    assert anonymous.patch("tutorsessions", "s", status, "status").status_code == 403
    for _ in range(2):
        refused = api.patch("tutorsessions", "s", status, "status")
        assert refused.status_code == 409 and refused.json()["reason"] == "Conflict"
        assert refused.json()["message"].startswith(
            'Operation cannot be fulfilled on tutorsessions.tutor.vts.dev "s"'
        )
    assert api.get("tutorsessions", "s").get("status") is None
    assert api.patch("tutorsessions", "s", status, "status").is_success
    assert kube_api.call(lambda: conflicts.hits) == 2

    kube_api.inject("error", resource="pods", after=True)
    failed = api.create("pods", pod("p"))
    assert failed.status_code == 500 and failed.json()["reason"] == "InternalError"
    assert api.get("pods", "p") is not None  # applied, though the client saw an error
    kube_api.inject("error", resource="pods")
    assert api.create("pods", pod("q")).status_code == 500
    assert api.get("pods", "q") is None


def test_a_hung_request_never_answers(kube_api: RunningEmulator, api: KubeClient) -> None:
    kube_api.inject("hang", methods={"POST"}, resource="pods", after=True)
    with pytest.raises(httpx.ReadTimeout):
        api.http.post(api.path("pods"), json=pod("p"), timeout=0.5)
    assert api.get("pods", "p") is not None  # it was applied before the silence
    kube_api.inject("hang", methods={"GET"}, resource="pods", name="p")
    with pytest.raises(httpx.ReadTimeout):
        api.http.get(api.path("pods", "p"), timeout=0.5)
    assert api.get("pods", "p") is not None  # one request only
    kube_api.inject("conflict", resource="pods")
    kube_api.clear_faults()
    assert api.create("pods", pod("q")).status_code == 201


# -- the components under the chart's RBAC ----------------------------------------------------


@pytest.mark.timeout(120)
def test_the_operator_works_under_the_charts_rbac_even_when_its_writes_conflict(
    cluster: Cluster,
) -> None:
    operator_user = f"system:serviceaccount:tutors:{chart_rbac('tutors').accounts['operator']}"
    # Its pinning patches conflict (as when the gateway records activity meanwhile): the
    # operator reads the session again, which its Role must allow.
    cluster.api.inject(
        "conflict", 3, methods={"PATCH"}, resource="tutorsessions/status", user=operator_user
    )
    for i in range(2):
        cluster.kube.create("tutorsessions", session_body(f"s{i}")).raise_for_status()

    def active() -> bool:
        return all(
            ((cluster.kube.get("tutorsessions", f"s{i}") or {}).get("status") or {}).get("phase")
            == "Active"
            for i in range(2)
        )

    wait_for(active, 60, "both sessions Active")
    users = cluster.api.call(lambda: dict(cluster.api.emulator.users))
    denials = cluster.api.call(lambda: list(cluster.api.emulator.denials))
    assert users.get(operator_user, 0) > 0 and "system:anonymous" not in users
    assert not [d for d in denials if operator_user in d], denials


def test_answers_are_application_json_as_the_real_servers(api: KubeClient) -> None:
    # lightkube reads an error's Status only under exactly this type (the real server's).
    missing = api.http.get(api.path("pods", "nobody"))
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
    assert missing.headers["Content-Type"] == "application/json"
    created = api.create("pods", pod("somebody"))
    assert created.status_code == 201 and created.headers["Content-Type"] == "application/json"
