"""Helpers shared by the operator tests (pure; no cluster)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from dspark_operator.api import JobView, parse_job
from dspark_operator.builders import BuildContext
from dspark_operator.status import Observed, PodInfo, WorkloadInfo

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
UID = "11111111-2222-3333-4444-555555555555"

MINIMAL_SPEC: dict[str, Any] = {"target": {"model": "Qwen/Qwen3-8B"}, "dataset": {"path": "/data/train.jsonl"}}


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def job_body(
    spec: Mapping[str, Any] | None = None,
    *,
    name: str = "demo",
    namespace: str = "ns",
    status: Mapping[str, Any] | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "dspark.io/v1alpha1",
        "kind": "DSparkTrainingJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": UID,
            "generation": generation,
            "resourceVersion": "100",
            "creationTimestamp": "2026-01-01T11:00:00Z",
        },
        "spec": deep_merge(MINIMAL_SPEC, spec or {}),
        "status": dict(status or {}),
    }


def make_job(spec: Mapping[str, Any] | None = None, **kwargs: Any) -> JobView:
    return parse_job(job_body(spec, **kwargs))


def assert_invalid(spec: Mapping[str, Any], field: str, words: str) -> None:
    """The job with `spec` is rejected, naming a field under `field`, with `words` in the message."""
    job = make_job(spec)
    assert job.spec is None and job.invalid is not None
    assert job.invalid.field.startswith(field), job.invalid
    assert words in job.invalid.message, job.invalid


def make_ctx(spec: Mapping[str, Any] | None = None, *, podmonitor: bool = False, name: str = "demo") -> BuildContext:
    job = make_job(spec, name=name)
    assert job.spec is not None, job.invalid
    return BuildContext(
        name=job.name,
        namespace=job.namespace,
        uid=job.uid,
        spec=job.spec,
        trainer_image="trainer:test",
        inference_image="serving:test",
        podmonitor_available=podmonitor,
    )


def pod(
    index: int,
    *,
    job: str = "demo",
    uid: str | None = None,
    phase: str = "Running",
    ready: bool = True,
    restarts: int = 0,
    deleting: bool = False,
    revision: str | None = "rev1",
) -> PodInfo:
    return PodInfo(
        name=f"{job}-trainer-{index}",
        uid=uid or f"uid-{index}",
        phase=phase,
        ready=ready,
        restart_count=restarts,
        deleting=deleting,
        revision=revision,
    )


def observed_up(nodes: int = 1, *, inference: int = 1, pods: tuple[PodInfo, ...] | None = None) -> Observed:
    return Observed(
        children=frozenset(),
        mooncake=WorkloadInfo("demo-mooncake", 1, 1),
        inference=WorkloadInfo("demo-inference", inference, inference),
        trainer=WorkloadInfo("demo-trainer", nodes, nodes, update_revision="rev1"),
        trainer_pods=pods if pods is not None else tuple(pod(i) for i in range(nodes)),
    )


def find(manifests: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    for m in manifests:
        if m["kind"] == kind and (
            component is None or m["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ):
            return m
    raise AssertionError(f"no {kind} {component or ''} among {[m['kind'] for m in manifests]}")


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
