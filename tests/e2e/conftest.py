"""Kind e2e fixtures: a real cluster with the chart installed (scripts/e2e-kind.sh sets it up).

Skipped unless TUTOR_E2E_KUBECONFIG names the cluster's kubeconfig; TUTOR_E2E_NAMESPACE and
TUTOR_E2E_RELEASE name the release (defaults: tutor-e2e, tutor-serving). Needs kubectl and helm.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import waiting

KUBECONFIG = os.environ.get("TUTOR_E2E_KUBECONFIG", "")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a kind cluster (make e2e-kind)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="no cluster: set TUTOR_E2E_KUBECONFIG (make e2e-kind)")
    for item in items:
        if item.get_closest_marker("e2e") and not KUBECONFIG:
            item.add_marker(skip)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` every second (a real cluster is slow) until it returns something truthy."""
    return waiting.wait_for(check, timeout, what, interval=1.0)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The kind cluster and the release under test."""

    namespace: str = os.environ.get("TUTOR_E2E_NAMESPACE", "tutor-e2e")
    release: str = os.environ.get("TUTOR_E2E_RELEASE", "tutor-serving")

    def run(self, tool: str, *args: str) -> str:
        """Run kubectl or helm on the release's namespace; its stdout."""
        command = [tool, "--kubeconfig", KUBECONFIG, "--namespace", self.namespace, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
        return done.stdout

    def kubectl(self, *args: str) -> str:
        return self.run("kubectl", *args)

    def names(self, kind: str, selector: str = "") -> list[str]:
        """Names of the objects of ``kind`` (optionally matching a label selector)."""
        args = ["get", kind, "-o", "name", *(["-l", selector] if selector else [])]
        return self.kubectl(*args).split()


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    return Cluster()


@contextlib.contextmanager
def port_forward(cluster: Cluster, target: str, port: int = 9000) -> Iterator[str]:
    """``http://127.0.0.1:<local port>`` forwarded by kubectl to ``target`` (svc/… or pod/…)."""
    command = ["kubectl", "--kubeconfig", KUBECONFIG, "--namespace", cluster.namespace]
    forward = subprocess.Popen(
        [*command, "port-forward", target, f":{port}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"kubectl port-forward {target} said: {line!r}"
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        forward.terminate()
        forward.wait(timeout=10)


GATEWAY = "app.kubernetes.io/component=gateway"


@pytest.fixture(scope="session")
def gateway(cluster: Cluster) -> Iterator[str]:
    """The gateway Service, port-forwarded."""
    [service] = cluster.names("service", f"app.kubernetes.io/instance={cluster.release},{GATEWAY}")
    with port_forward(cluster, service) as url:
        yield url


@pytest.fixture(scope="session")
def management_key(cluster: Cluster) -> str:
    """The management API key the chart generated, read the way NOTES.txt says."""
    [secret] = cluster.names("secret", f"app.kubernetes.io/instance={cluster.release},{GATEWAY}")
    encoded = cluster.kubectl("get", secret, "-o", "jsonpath={.data.api-keys}")
    return base64.b64decode(encoded).decode().splitlines()[0]
