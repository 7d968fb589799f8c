"""Helpers shared by the operator tests (pure; no cluster)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from dspark_operator.api import JobView, parse_job
from dspark_operator.builders import BuildContext
from dspark_operator.kube import KINDS, ApiError
from dspark_operator.status import Observed, PodInfo, WorkloadInfo

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
UID = "11111111-2222-3333-4444-555555555555"

MINIMAL_SPEC: dict[str, Any] = {"target": {"model": "Qwen/Qwen3-8B"}, "dataset": {"path": "/data/train.jsonl"}}


def with_ephemeral_output(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with trainer.output.ephemeral: true unless it names an output claim or says ephemeral itself
    (the tests' tiny jobs write to an emptyDir)."""
    output = (spec.get("trainer") or {}).get("output") or {}
    if "claimName" in output or "ephemeral" in output:
        return spec
    return deep_merge(spec, {"trainer": {"output": {"ephemeral": True}}})


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
        "spec": with_ephemeral_output(deep_merge(MINIMAL_SPEC, spec or {})),
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


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeApi:
    """Enough of KubeApi for the reconciler: objects by path, label selectors by equality, apply = merge."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.reject: dict[str, tuple[int, dict[str, Any]]] = {}  # dry runs of these paths fail: (status, Status body)
        self._rv = 0

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        obj["metadata"].setdefault("uid", f"uid-{self._rv}")

    async def get(self, path: str) -> dict[str, Any] | None:
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        want = dict(p.split("=", 1) for p in (label_selector or "").split(",") if p)
        out = []
        for key, obj in self.objects.items():
            if key.rsplit("/", 1)[0] != path:
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in want.items()):
                out.append(copy.deepcopy(obj))
        return out

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        path = KINDS[manifest["kind"]].item(manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        self.calls.append(("apply", path))
        obj = copy.deepcopy(dict(manifest))
        old = self.objects.get(path)
        if old is not None:
            obj["metadata"]["uid"] = old["metadata"]["uid"]
            obj["status"] = old.get("status", {})
        self._bump(obj)
        self.objects[path] = obj
        return copy.deepcopy(obj)

    async def request(
        self, method: str, path: str, query: Sequence[tuple[str, str]] = (), body: Any = None, content_type: Any = None
    ) -> dict[str, Any]:
        if method == "GET":
            return {"items": []}
        assert ("dryRun", "All") in query
        self.calls.append(("dry-run", path))
        if path in self.reject:
            status, answer = self.reject[path]
            raise ApiError(status, str(answer.get("reason", "Invalid")), str(answer.get("message", "")), answer)
        return {}

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", path))
        base = path.removesuffix("/status").removesuffix("/scale")
        obj = self.objects[base]
        if path.endswith("/status"):
            status = obj.setdefault("status", {})
            for k, v in patch["status"].items():
                if v is None:
                    status.pop(k, None)
                else:
                    status[k] = v
        elif path.endswith("/scale"):
            obj["spec"]["replicas"] = patch["spec"]["replicas"]
        else:  # a merge patch of the object (lists replaced, maps merged)
            _merge(obj, patch)
        self._bump(obj)
        return copy.deepcopy(obj)

    async def delete(self, path: str, *, uid: str | None = None, propagation: str = "Background", **_: Any) -> bool:
        self.calls.append(("delete", path))
        return self.objects.pop(path, None) is not None

    async def api_group_exists(self, group_version: str) -> bool:
        return False
