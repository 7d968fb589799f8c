"""The operator-side regeneration Job builder (pure; not wired into the reconciler yet): its manifest, and that
every argument it gives `dspark data regenerate` is accepted by the real command line."""

from __future__ import annotations

from typing import Any

from dspark_operator.api import parse_job
from dspark_operator.builders import BuildContext
from dspark_operator.builders.regenerate_job import (
    RegenerateSpec,
    build_regenerate_job,
)
from dspark_trainer.cli import build_parser
from dspark_trainer.commands.data import _options

UID = "11111111-2222-3333-4444-555555555555"


def ctx(spec_extra: dict[str, Any] | None = None) -> BuildContext:
    spec: dict[str, Any] = {
        "target": {"model": "Qwen/Qwen3-8B"},
        "dataset": {"path": "/data/prompts/*.jsonl", "claimName": "prompts"},
        "inference": {"replicas": 3, "port": 30000},
        "trainer": {"output": {"claimName": "out", "mountPath": "/output"}},
        **(spec_extra or {}),
    }
    job = parse_job({
        "apiVersion": "dspark.io/v1alpha1", "kind": "DSparkTrainingJob",
        "metadata": {"name": "demo", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "1",
                     "creationTimestamp": "2026-01-01T11:00:00Z"},
        "spec": spec, "status": {},
    })
    assert job.spec is not None, job.invalid
    return BuildContext(name=job.name, namespace=job.namespace, uid=job.uid, spec=job.spec,
                        trainer_image="trainer:test", inference_image="serving:test")


def test_job_manifest() -> None:
    c = ctx()
    regen = RegenerateSpec.model_validate({"maxTokens": 1024, "seed": 7, "concurrencyPerReplica": 16})
    job = build_regenerate_job(c, regen)
    assert job["kind"] == "Job" and job["metadata"]["name"] == "demo-regenerate"
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "regenerate"
    assert job["spec"]["backoffLimit"] == 3 and job["spec"]["suspend"] is False
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["image"] == "trainer:test" and container["command"] == ["dspark"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["data"]["mountPath"] == "/data" and mounts["data"]["readOnly"]
    assert mounts["output"]["mountPath"] == "/output" and not mounts["output"].get("readOnly")
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["output"]["persistentVolumeClaim"]["claimName"] == "out"
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    res = container["resources"]
    assert res["requests"]["cpu"] == 4 and "nvidia.com/gpu" not in res.get("limits", {})
    assert container["args"][container["args"].index("--output") + 1] == "/output/regenerated"


def test_job_arguments_are_accepted_by_the_cli() -> None:
    regen = RegenerateSpec.model_validate({"maxTokens": 1024, "seed": 7, "concurrencyPerReplica": 16,
                                           "enableThinking": True, "rejectTruncated": True})
    container = build_regenerate_job(ctx(), regen)["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])
    opts = _options(args)
    assert opts.input == "/data/prompts/*.jsonl" and str(opts.output) == "/output/regenerated"
    assert opts.endpoints == ("http://demo-inference.ns.svc:30000",)
    assert opts.concurrency_per_endpoint == 3 * 16  # replicas x per replica behind one Service
    s = opts.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.seed, s.enable_thinking) == (0.7, 0.8, 20, 1024, 7, True)
    assert opts.reject_truncated and opts.num_cpus == 4 and opts.wait_endpoints_s == 1800
    assert args.summary_to == "/dev/termination-log" and not opts.progress
    assert 0 < (opts.object_store_memory or 0) < 2 << 30


def test_job_pod_takes_the_job_wide_placement_unless_the_regeneration_overrides_it() -> None:
    gpu_nodes = {"scheduling": {"nodeSelector": {"nvidia.com/gpu.product": "H100"},
                                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}}
    c = ctx(gpu_nodes)
    pod = build_regenerate_job(c, RegenerateSpec())["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and len(pod["tolerations"]) == 1
    off_gpu = RegenerateSpec.model_validate({"nodeSelector": {}, "tolerations": []})
    pod = build_regenerate_job(c, off_gpu)["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    cpu_pool = RegenerateSpec.model_validate({"nodeSelector": {"pool": "cpu"}})
    pod = build_regenerate_job(c, cpu_pool)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"} and len(pod["tolerations"]) == 1


def test_regeneration_placement_is_validated_naming_the_field() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="tolerations"):
        RegenerateSpec.model_validate({"tolerations": [{"operator": "Sideways"}]})
