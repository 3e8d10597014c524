"""The test support's own tests: what the emulator adds to kmock behaves like an API server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.cluster import KubeClient
from tests.support.kube_emulator import RunningEmulator, json_patch, label_matcher, merge_patch

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
    with httpx.Client(base_url=kube_api.url) as http:
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
