"""A loading pod's reason from its engine's /readyz: the pure parts, and one real engine."""

from __future__ import annotations

import asyncio

from tutor_engine.app import create_app
from tutor_engine.config import EngineSettings
from tutor_operator import conditions as c
from tutor_operator.decisions import PodView, waiting_reason
from tutor_operator.objects import engine_scaling, resolve
from tutor_operator.readiness import EngineReadiness, loading_detail, with_detail

from tests.operator.builders import defaults
from tests.servers import serve

PROBLEM = "LLM server http://vllm:8000 unreachable: connection refused"


def test_the_problem_of_a_readyz_answer() -> None:
    assert loading_detail({"ready": False, "problem": PROBLEM}) == PROBLEM
    assert loading_detail({"ready": False, "problem": None}) is None
    assert loading_detail({"ready": True, "problem": PROBLEM}) is None
    assert loading_detail(["not", "an", "engine"]) is None
    assert len(loading_detail({"ready": False, "problem": "x" * 5000}) or "") < 1100


def test_only_a_loading_pod_takes_it_into_its_message() -> None:
    loading = PodView("tutor-1-a", c.LOADING, "engine is loading its models", "http://p:8000")
    named = with_detail(loading, PROBLEM)
    assert named.message == f"engine is loading its models: {PROBLEM}"
    assert with_detail(loading, None) == loading
    pulling = PodView("tutor-1-b", c.PULLING, "ContainerCreating")
    assert with_detail(pulling, PROBLEM) == pulling
    engine = {"metadata": {"name": "tutor-1"}, "spec": {"tutorId": 1}}
    reason = waiting_reason([named], engine_scaling(resolve(engine, defaults())), "tutor-1", 1)
    assert reason == (c.LOADING, f"pod tutor-1-a: engine is loading its models: {PROBLEM}")


async def test_a_real_engine_is_asked_and_its_problem_shown() -> None:
    engine = create_app(
        EngineSettings(
            _env_file=None,
            llm_backend="openai",
            llm_base_url="http://127.0.0.1:9/v1",
            llm_wait_seconds=600,
        )
    )
    readiness = EngineReadiness(interval=0.1, timeout=2)
    with serve(engine) as running:
        pod = PodView("tutor-1-a", c.LOADING, "engine is loading its models", running.http)
        for _ in range(200):
            (view,) = readiness.views([pod])
            if view.message != pod.message:
                break
            await asyncio.sleep(0.05)
        await readiness.close()
    assert view.message == (
        "engine is loading its models: "
        "LLM server http://127.0.0.1:9 unreachable: connection refused"
    )
    # A pod that is gone is forgotten.
    assert readiness.views([]) == []
