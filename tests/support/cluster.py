"""Pytest fixtures for cluster tests: the API emulator, the fake kubelet, the real operator.

Import them into a ``conftest.py`` (``from tests.support.cluster import *`` style, naming
them) to reuse: ``kube_api`` (a ``RunningEmulator`` with the CRDs and the chart's RBAC),
``kube`` (an administrator's ``KubeClient`` on the test namespace, with the engine-key
Secret), ``kubelet`` (a started ``FakeKubelet``), ``operator_factory`` (start
``python -m tutor_operator`` processes, each with the operator's ServiceAccount token) and
``cluster`` (all of them, with the operator running on mock-backend defaults).

RBAC is enforced: the emulator authorizes every request against the Roles and bindings of
``charts/tutor-serving`` rendered into the test namespace, and each component uses the
identity its chart Deployment runs as (``kube_api.tokens["operator"]``, ``["gateway"]``).
A test that needs no RBAC opts out with
``@pytest.mark.parametrize("kube_api", [{"rbac": False}], indirect=True)``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest

from .chart_rbac import chart_rbac
from .kube_emulator import ADMIN_TOKEN, KubeEmulator, RunningEmulator, merge_patch
from .kubelet import FakeKubelet
from .paths import rest_path
from .waiting import wait_for as wait_for  # the tests' waiting helper, re-exported

NAMESPACE = "tutors"
ENGINE_KEY = "test-engine-key"
ENGINE_KEY_SECRET = "tutor-engine-key"
# Operator settings for tests: fast reconciliation (the engine defaults: OPERATOR_ENGINE).
OPERATOR_ENV = {
    "TUTOR_OPERATOR_RECONCILE_INTERVAL": "0.5",
    # No metrics server unless a test asks for one on a free port (8081 would clash when
    # tests start several operators); tests/cluster/test_operator_metrics.py does.
    "TUTOR_OPERATOR_METRICS_PORT": "0",
}
# The engine defaults of test operators (TUTOR_OPERATOR_ENGINE_DEFAULTS, the chart's keys):
# mock backends, long idle timeouts.
OPERATOR_ENGINE: dict[str, Any] = {
    "image": "tutor-engine:test",
    "models": {"llm": {"backend": "mock"}, "asr": {"backend": "mock"}, "tts": {"backend": "mock"}},
    "maxReplicas": 2,
    "maxSessionsPerReplica": 4,
    "idleTimeoutSeconds": 600,
}


def operator_env(engine: Mapping[str, Any] | None = None, **env: str) -> dict[str, str]:
    """``OPERATOR_ENV`` with ``env`` over it, and ``OPERATOR_ENGINE`` with ``engine``'s keys
    (nested ones too) merged in as TUTOR_OPERATOR_ENGINE_DEFAULTS."""
    engine_defaults = json.dumps(merge_patch(OPERATOR_ENGINE, engine or {}))
    return {**OPERATOR_ENV, "TUTOR_OPERATOR_ENGINE_DEFAULTS": engine_defaults, **env}


class KubeClient:
    """A small synchronous client for tests: JSON objects on one namespace.

    It authenticates as the emulator's administrator unless given another ``token``
    (``None``: anonymous).
    """

    def __init__(
        self, url: str, namespace: str = NAMESPACE, token: str | None = ADMIN_TOKEN
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, timeout=10, headers=headers)
        self.namespace = namespace

    def path(self, plural: str, name: str | None = None, sub: str | None = None) -> str:
        """The REST path of a namespaced collection or object."""
        return rest_path(plural, self.namespace, name, sub)

    def create(self, plural: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(self.path(plural), json=body)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        response = self.http.get(self.path(plural, name))
        return response.json() if response.status_code == 200 else None

    def list(self, plural: str, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else {}
        return self.http.get(self.path(plural), params=params).json()["items"]

    def patch(
        self, plural: str, name: str, body: dict[str, Any], sub: str | None = None
    ) -> httpx.Response:
        headers = {"Content-Type": "application/merge-patch+json"}
        return self.http.patch(self.path(plural, name, sub), json=body, headers=headers)

    def delete(self, plural: str, name: str) -> httpx.Response:
        return self.http.delete(self.path(plural, name))

    def close(self) -> None:
        self.http.close()


class OperatorProcess:
    """``python -m tutor_operator`` against the emulator, as a killable child process."""

    def __init__(
        self,
        api_url: str,
        namespace: str,
        env: dict[str, str],
        log: pathlib.Path,
        token_file: pathlib.Path | None = None,
    ) -> None:
        self.api_url, self.namespace, self.env, self.log = api_url, namespace, env, log
        self.token_file = token_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUTOR_OPERATOR_")}
        command = [sys.executable, "-m", "tutor_operator", "--verbose"]
        command += ["--server", self.api_url, "--namespace", self.namespace]
        if self.token_file is not None:
            command += ["--token-file", str(self.token_file)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, env={**env, **self.env}, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye — as a crashed or evicted pod."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclasses.dataclass
class Cluster:
    """Everything a cluster test touches."""

    api: RunningEmulator
    kube: KubeClient
    kubelet: FakeKubelet
    operator: OperatorProcess

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def namespace(self) -> str:
        return self.kube.namespace


@pytest.fixture
def kube_api(request: pytest.FixtureRequest) -> Iterator[RunningEmulator]:
    """The Kubernetes API emulator on 127.0.0.1 with the project's CRDs registered and the
    chart's ServiceAccounts, Roles and RoleBindings; ``tokens`` has each component's token.

    Parametrize it indirectly with ``KubeEmulator`` options to change them, e.g.
    ``@pytest.mark.parametrize("kube_api", [{"rbac": False}], indirect=True)`` or
    ``[{"history_size": 5, "bookmark_interval": 0.5}]``.
    """
    with chart_cluster(**getattr(request, "param", {})) as running:
        yield running
        denials = running.read(lambda: list(running.emulator.denials))
        if denials:
            print(f"--- {len(denials)} requests denied by RBAC:\n" + "\n".join(denials))


@contextlib.contextmanager
def chart_cluster(**options: Any) -> Iterator[RunningEmulator]:
    """The emulator (``KubeEmulator`` options) serving the CRDs and the chart's RBAC, with each
    component's token in ``tokens``: what ``kube_api`` yields, for code outside a test."""
    emulator = KubeEmulator(**options)
    emulator.load_crds()
    chart = chart_rbac(NAMESPACE)
    emulator.load_manifests(list(chart.manifests), NAMESPACE)
    with RunningEmulator(emulator) as running:
        for component, account in chart.accounts.items():
            running.tokens[component] = running.call(emulator.issue_token, NAMESPACE, account)
        yield running


@pytest.fixture
def kube(kube_api: RunningEmulator) -> Iterator[KubeClient]:
    """A client on the test namespace, where the engine-key Secret already exists."""
    client = KubeClient(kube_api.url)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": ENGINE_KEY_SECRET},
        "data": {"api-key": base64.b64encode(ENGINE_KEY.encode()).decode()},
    }
    client.create("secrets", secret).raise_for_status()
    yield client
    client.close()


@pytest.fixture
def kubelet(kube_api: RunningEmulator) -> Iterator[FakeKubelet]:
    """A fake kubelet running engine Deployments of the test namespace as local processes."""
    with FakeKubelet(kube_api.url, NAMESPACE, token=ADMIN_TOKEN) as running:
        yield running
        print("fake kubelet engine logs:\n" + running.logs())


@pytest.fixture
def operator_factory(kube_api: RunningEmulator) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators (``operator_env``'s arguments); all are stopped at the end."""
    started: list[OperatorProcess] = []
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="tutor-operator-"))

    token_file = log_dir / "operator-token"
    token_file.write_text(kube_api.tokens["operator"])

    def start(engine: Mapping[str, Any] | None = None, **env: str) -> OperatorProcess:
        log = log_dir / f"operator-{len(started)}.log"
        operator = OperatorProcess(
            kube_api.url, NAMESPACE, operator_env(engine, **env), log, token_file
        )
        started.append(operator.start())
        return operator

    yield start
    for operator in started:
        operator.stop()
        with contextlib.suppress(Exception):
            print(f"--- operator log {operator.log}:\n{operator.logs()[-20000:]}")


@pytest.fixture
def cluster(
    kube_api: RunningEmulator,
    kube: KubeClient,
    kubelet: FakeKubelet,
    operator_factory: Callable[..., OperatorProcess],
) -> Cluster:
    """Emulator + fake kubelet + the operator (test defaults), on namespace ``tutors``."""
    return Cluster(kube_api, kube, kubelet, operator_factory())
