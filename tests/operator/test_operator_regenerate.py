"""Data regeneration before training (`spec.dataset.regenerate`): the API, the Job builder, the status rules
(Pending -> Regenerating -> Running, Failed with the Job's reason) and the reconciler's handling of the Job
(created once inference is ready, never updated, deleted when the job stops), without a cluster."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from dspark_operator import crdgen
from dspark_operator.api.spec import RegenerateSpec
from dspark_operator.builders import build_children, build_regenerate_job
from dspark_operator.builders.config import render_job_config
from dspark_operator.builders.regenerate_job import (
    describe_summary,
    failure_from_pods,
    quantity_bytes,
    regenerate_args,
    summary_from_pod,
)
from dspark_operator.metrics import OperatorMetrics
from dspark_operator.reconcile import LogEventSink, Reconciler
from dspark_operator.settings import Settings
from dspark_operator.status import JobInfo, Observed, WorkloadInfo, Workloads, decide, job_info
from dspark_trainer.cli import build_parser
from dspark_trainer.commands.data import _options
from operator_helpers import NOW, UID, FakeApi, assert_invalid, find, job_body, make_ctx, make_job, observed_up

REGEN: dict[str, Any] = {
    "dataset": {"path": "/data/prompts/*.jsonl", "claimName": "prompts", "regenerate": {}},
    "trainer": {"output": {"claimName": "out"}},
}


def regen_spec(**regenerate: Any) -> dict[str, Any]:
    spec = copy.deepcopy(REGEN)
    spec["dataset"]["regenerate"] = regenerate
    return spec


def container(job: Mapping[str, Any]) -> dict[str, Any]:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return dict(c)


# ----------------------------------------------------------------------------------- API


def test_regenerate_defaults_are_the_published_recipe() -> None:
    job = make_job(REGEN)
    assert job.spec is not None, job.invalid
    regen = job.spec.dataset.regenerate
    assert regen is not None
    assert (regen.temperature, regen.top_p, regen.top_k, regen.enable_thinking) == (0.7, 0.8, 20, False)
    assert regen.output_dir == "regenerated" and regen.backoff_limit == 3 and regen.ray_address is None
    plain = make_job().spec
    assert plain is not None and plain.dataset.regenerate is None


def test_crd_schema_of_regenerate() -> None:
    schema = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    dataset = spec["properties"]["dataset"]
    regen = dataset["properties"]["regenerate"]
    assert "default" not in regen, "regenerate is off unless given"
    props = regen["properties"]
    assert props["temperature"]["default"] == 0.7 and props["topP"]["default"] == 0.8
    assert props["topK"]["default"] == 20 and props["enableThinking"]["default"] is False
    for field in ("outputDir", "rayAddress", "backoffLimit", "concurrencyPerReplica", "maxRetries", "resources"):
        assert props[field]["description"], field
    rules = {r["rule"]: r for r in dataset["x-kubernetes-validations"]}
    assert any("oldSelf.regenerate" in r for r in rules), "regenerate is immutable"
    claim = [r for r in spec["x-kubernetes-validations"] if "regenerate" in r["rule"]]
    assert claim and claim[0]["fieldPath"] == ".trainer.output.claimName"
    assert "Regenerating" in schema["properties"]["status"]["properties"]["phase"]["enum"]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"dataset": {"path": "/data/x.jsonl", "regenerate": {}}}, "spec.trainer.output.claimName", "output volume"),
        (regen_spec(outputDir="a/../../etc"), "spec.dataset.regenerate.outputDir", "pattern"),
        (regen_spec(outputDir="checkpoints"), "spec.dataset.regenerate.outputDir", "checkpointDir"),
        (regen_spec(outputDir="draft/data"), "spec.dataset.regenerate.outputDir", "draftDir"),
        (regen_spec(outputDir="/abs"), "spec.dataset.regenerate.outputDir", "pattern"),
        (regen_spec(temperature=3), "spec.dataset.regenerate.temperature", "less than or equal"),
        (regen_spec(topP=0), "spec.dataset.regenerate.topP", "greater than 0"),
        (regen_spec(bogus=1), "spec.dataset.regenerate.bogus", "Extra inputs"),
    ],
)
def test_invalid_regenerate_specs_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    assert_invalid(spec, field, words)


def test_trainer_reads_the_regenerated_dataset() -> None:
    config = render_job_config(make_ctx(regen_spec(outputDir="regen/v1")))
    assert config.dataset.path == "/output/regen/v1"
    # Generation needs prompt + response: the servers' context length makes room for regenerate.maxTokens.
    assert config.inference.context_length == config.dataset.max_length + 2048
    plain = render_job_config(make_ctx())
    assert plain.dataset.path == "/data/train.jsonl"
    assert plain.inference.context_length == plain.dataset.max_length + 1
    # The ConfigMap says so too, and the rendered config has no regenerate section (the trainer does not know it).
    cm = find(build_children(make_ctx(REGEN)), "ConfigMap")
    rendered = yaml.safe_load(cm["data"]["job.yaml"])
    assert rendered["dataset"]["path"] == "/output/regenerated"
    assert "regenerate" not in rendered["dataset"] and "claimName" not in rendered["dataset"]


# ----------------------------------------------------------------------------------- builder


def test_regeneration_job_manifest() -> None:
    spec = regen_spec(backoffLimit=5, activeDeadlineSeconds=7200, cpus=8, memory="16Gi")
    spec["scheduling"] = {
        "nodeSelector": {"pool": "cpu"},
        "priorityClassName": "high",
        "queueName": "team-q",
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    }
    spec["trainer"]["output"]["mountPath"] = "/out"
    ctx = make_ctx(spec)
    job = build_regenerate_job(ctx)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    meta = job["metadata"]
    assert meta["name"] == "demo-regenerate" and meta["namespace"] == "ns"
    (ref,) = meta["ownerReferences"]
    assert ref["uid"] == UID and ref["kind"] == "DSparkTrainingJob" and ref["controller"]
    labels = meta["labels"]
    assert labels["app.kubernetes.io/component"] == "regenerate"
    assert labels["app.kubernetes.io/instance"] == "demo"
    assert labels["app.kubernetes.io/managed-by"] == "dspark-operator"
    assert "kueue.x-k8s.io/queue-name" not in labels  # the job's Kueue Workload is queued, not its pods
    js = job["spec"]
    assert js["backoffLimit"] == 5 and js["activeDeadlineSeconds"] == 7200
    assert "ttlSecondsAfterFinished" not in js, "kept for inspection; garbage-collected with the job"
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "regenerate", "operator": "In", "values": [2]},
    }
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert js["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "regenerate"
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["priorityClassName"] == "high"
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    c = container(job)
    assert c["image"] == "trainer:test" and c["command"] == ["dspark"]
    assert c["resources"] == {"requests": {"cpu": 8, "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    assert not c["securityContext"]["privileged"]
    # The output volume is the trainer's: same claim, same mount path, so the trainer reads what the Job wrote.
    sts = find(build_children(ctx, trainer_up=False), "StatefulSet")
    assert sts["spec"]["replicas"] == 0
    tpod = sts["spec"]["template"]["spec"]
    (tc,) = tpod["containers"]
    for name in ("output", "data"):
        assert next(v for v in pod["volumes"] if v["name"] == name) == next(
            v for v in tpod["volumes"] if v["name"] == name
        )
        assert next(m for m in c["volumeMounts"] if m["name"] == name) == next(
            m for m in tc["volumeMounts"] if m["name"] == name
        )
    args = c["args"]
    assert args[args.index("--output") + 1] == "/out/regenerated"
    assert yaml.safe_load(find(build_children(ctx), "ConfigMap")["data"]["job.yaml"])["dataset"]["path"] == (
        "/out/regenerated"
    )


def test_image_precedence() -> None:
    assert container(build_regenerate_job(make_ctx(REGEN)))["image"] == "trainer:test"
    spec = regen_spec()
    spec["trainer"]["image"] = "mine/trainer:1"
    assert container(build_regenerate_job(make_ctx(spec)))["image"] == "mine/trainer:1"
    spec["dataset"]["regenerate"]["image"] = "mine/regen:2"
    assert container(build_regenerate_job(make_ctx(spec)))["image"] == "mine/regen:2"


def test_job_arguments_are_what_the_real_cli_accepts() -> None:
    spec = regen_spec(
        temperature=0.6,
        topP=0.95,
        topK=-1,
        maxTokens=4096,
        enableThinking=True,
        seed=11,
        rejectTruncated=True,
        concurrencyPerReplica=8,
        maxRetries=9,
        shardSize=250,
        workers=3,
        requestTimeoutSeconds=90,
        waitEndpointsSeconds=120,
        cpus=6,
        shmSize="1Gi",
    )
    spec["inference"] = {"replicas": 3, "port": 31000}
    ctx = make_ctx(spec)
    args = build_parser().parse_args(container(build_regenerate_job(ctx))["args"])
    opts = _options(args)
    assert opts.input == "/data/prompts/*.jsonl" and str(opts.output) == "/output/regenerated"
    # The job's own inference Service (name and port as the inference builder makes them).
    svc = find(build_children(ctx), "Service", "inference")
    assert opts.endpoints == (f"http://{svc['metadata']['name']}.ns.svc:{svc['spec']['ports'][0]['port']}",)
    assert opts.endpoints == ("http://demo-inference.ns.svc:31000",)
    assert opts.concurrency_per_endpoint == 3 * 8
    s = opts.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.enable_thinking, s.seed) == (0.6, 0.95, -1, 4096, True, 11)
    assert opts.reject_truncated and opts.retry.max_retries == 9 and opts.shard_size == 250 and opts.workers == 3
    assert opts.request_timeout_s == 90 and opts.wait_endpoints_s == 120
    assert opts.ray_address is None and opts.num_cpus == 6
    assert opts.object_store_memory == int((1 << 30) * 0.8)
    assert args.summary_to == "/dev/termination-log" and not opts.progress


def test_ray_address_joins_a_ray_cluster_instead_of_a_local_ray() -> None:
    ctx = make_ctx(regen_spec(rayAddress="ray://raycluster-head-svc.ray.svc:10001"))
    opts = _options(build_parser().parse_args(regenerate_args(ctx)))
    assert opts.ray_address == "ray://raycluster-head-svc.ray.svc:10001"
    assert opts.num_cpus is None and opts.object_store_memory is None
    # Builtin datasets are read by the CLI too (the trainer image ships them).
    spec = regen_spec()
    spec["dataset"] = {"path": "builtin:demo-conversations", "regenerate": {}}
    opts = _options(build_parser().parse_args(regenerate_args(make_ctx(spec))))
    assert opts.input == "builtin:demo-conversations"
    volumes = build_regenerate_job(make_ctx(spec))["spec"]["template"]["spec"]["volumes"]
    assert "data" not in {v["name"] for v in volumes}


def test_builder_needs_regenerate_and_quantities_parse() -> None:
    with pytest.raises(ValueError, match="regenerate is not set"):
        build_regenerate_job(make_ctx())
    regen = RegenerateSpec.model_validate({"maxTokens": 64})
    assert build_regenerate_job(make_ctx(), regen)["metadata"]["name"] == "demo-regenerate"  # explicit settings
    assert quantity_bytes("2Gi") == 2 << 30 and quantity_bytes("512Mi") == 512 << 20
    assert quantity_bytes("1G") == 10**9 and quantity_bytes("1.5Gi") == 3 << 29
    assert quantity_bytes("1e9") == 10**9 and quantity_bytes(1048576) == 1048576
    with pytest.raises(ValueError):
        quantity_bytes("lots")


def test_counts_from_the_termination_message() -> None:
    counts = {"read": 10, "written": 9, "rejected": 1, "total_written": 9, "total_rejected": 1, "complete": True}
    pod = {
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "regenerate", "state": {"terminated": {"exitCode": 0, "message": json.dumps(counts) + "\n"}}}
            ],
        }
    }
    assert summary_from_pod(pod) == counts
    assert describe_summary(counts) == "9 samples written, 1 rejected"
    assert summary_from_pod({"status": {"containerStatuses": [{"name": "regenerate", "state": {}}]}}) is None
    assert describe_summary(None) == ""


def test_failure_from_the_last_failed_pod() -> None:
    def failed_pod(created: str, code: int, message: str) -> dict[str, Any]:
        terminated = {"exitCode": code, "reason": "Error", "message": message}
        return {
            "metadata": {"creationTimestamp": created},
            "status": {
                "phase": "Failed",
                "containerStatuses": [{"name": "regenerate", "state": {"terminated": terminated}}],
            },
        }

    pods = [
        failed_pod("2026-01-01T12:00:09Z", 2, "dspark data regenerate: --input: no such file\n"),
        failed_pod("2026-01-01T12:00:01Z", 1, "first try"),
        {"metadata": {"creationTimestamp": "2026-01-01T12:00:10Z"}, "status": {"phase": "Pending"}},
    ]
    assert failure_from_pods(pods) == "exit code 2: dspark data regenerate: --input: no such file"
    assert failure_from_pods([failed_pod("t", 137, "")]) == "exit code 137"
    assert failure_from_pods([failed_pod("t", 1, "x" * 2000)], limit=10) == "exit code 1: ..." + "x" * 10
    assert failure_from_pods([]) == ""


# ----------------------------------------------------------------------------------- status rules


def job_obj(*, complete: bool = False, failed: tuple[str, str] | None = None, active: int = 1) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    if complete:
        conditions += [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
        ]
    if failed:
        conditions += [
            {"type": "FailureTarget", "status": "True", "reason": failed[0], "message": failed[1]},
            {"type": "Failed", "status": "True", "reason": failed[0], "message": failed[1]},
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "demo-regenerate", "namespace": "ns", "uid": "job-uid"},
        "status": {
            "active": 0 if (complete or failed) else active,
            "succeeded": 1 if complete else 0,
            "failed": 4 if failed else 0,
            "conditions": conditions,
        },
    }


def infra_up(job: JobInfo | None = None, *, trainer_pods: bool = False) -> Observed:
    up = observed_up(1)
    return Observed(
        mooncake=up.mooncake,
        inference=up.inference,
        trainer=WorkloadInfo("demo-trainer", 1 if trainer_pods else 0, 1 if trainer_pods else 0, "rev1"),
        trainer_pods=up.trainer_pods if trainer_pods else (),
        regenerate=job,
    )


def conds(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: dict(c) for c in status.get("conditions", [])}


def advance(status: Mapping[str, Any], observed: Observed, *, spec: dict[str, Any] | None = None, at: int = 0):  # type: ignore[no-untyped-def]
    d = decide(make_job(REGEN if spec is None else spec, status=status), observed, NOW + dt.timedelta(seconds=at))
    return d, d.status.to_wire()


def test_job_info_from_a_job_object() -> None:
    assert job_info(job_obj()) == JobInfo(name="demo-regenerate", uid="job-uid", active=1)
    done = job_info(job_obj(complete=True))
    assert done.complete and done.finished and done.failed_reason is None
    failed = job_info(job_obj(failed=("BackoffLimitExceeded", "Job has reached the specified backoff limit")))
    assert failed.failed_reason == "BackoffLimitExceeded" and failed.finished and not failed.complete
    assert failed.failed_message == "Job has reached the specified backoff limit" and failed.failed == 4
    # FailureTarget alone (pods still terminating) is not failed yet.
    obj = job_obj()
    obj["status"]["conditions"] = [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]
    assert not job_info(obj).finished


def test_pending_then_regenerating_then_running() -> None:
    # 1. Nothing observed: Pending; the trainer is built at 0 replicas and no Job yet.
    d, st = advance({}, Observed())
    assert st["phase"] == "Pending" and d.workloads is Workloads.UP
    assert not d.trainer_up and not d.regenerate_job
    c = conds(st)
    assert c["Regenerating"]["status"] == "True" and c["Regenerating"]["reason"] == "WaitingForInference"
    assert c["TrainerReady"]["reason"] == "WaitingForRegeneration"
    assert c["Running"]["status"] == "False" and c["Running"]["reason"] == "Regenerating"

    # 2. Mooncake up, inference not ready yet: Regenerating (stage), still no Job.
    up = infra_up()
    half = Observed(mooncake=up.mooncake, inference=WorkloadInfo("demo-inference", 1, 0), trainer=up.trainer)
    d, st = advance(st, half, at=5)
    assert st["phase"] == "Regenerating" and not d.regenerate_job and not d.trainer_up
    assert "PhaseRegenerating" in [e.reason for e in d.events]

    # 3. Inference ready: create the Job.
    d, st = advance(st, infra_up(), at=10)
    assert st["phase"] == "Regenerating" and d.regenerate_job and not d.trainer_up
    assert conds(st)["Regenerating"]["reason"] == "JobRunning"
    assert d.requeue_after is not None

    # 4. The Job runs: nothing more to create.
    d, st = advance(st, infra_up(job_info(job_obj())), at=20)
    assert st["phase"] == "Regenerating" and not d.regenerate_job and not d.trainer_up
    assert "1 running, 0 failed (backoffLimit 3)" in conds(st)["Regenerating"]["message"]

    # 5. The Job completes: the trainer scales up (Starting until its pods run).
    done = job_info(job_obj(complete=True), {"total_written": 90, "total_rejected": 2})
    d, st = advance(st, infra_up(done), at=30)
    assert d.trainer_up and not d.regenerate_job and d.workloads is Workloads.UP
    regen = conds(st)["Regenerating"]
    assert regen["status"] == "False" and regen["reason"] == "Completed"
    assert "/output/regenerated" in regen["message"] and "90 samples written, 2 rejected" in regen["message"]
    assert st["phase"] == "Starting"

    # 6. Trainer pods run: Running.
    d, st = advance(st, infra_up(done, trainer_pods=True), at=40)
    assert st["phase"] == "Running" and d.trainer_up
    c = conds(st)
    assert c["Running"]["status"] == "True" and c["TrainerReady"]["status"] == "True"
    assert c["Regenerating"]["reason"] == "Completed"

    # 7. Level-based: the recorded Completed condition is enough (a deleted Job is not recreated, training goes on).
    d, st2 = advance(st, infra_up(None, trainer_pods=True), at=50)
    assert st2["phase"] == "Running" and d.trainer_up and not d.regenerate_job


def test_a_restarted_operator_derives_the_stage_from_the_job() -> None:
    # Status lost or never written after the Job completed: the Complete Job alone lets training start.
    d, st = advance({"phase": "Regenerating"}, infra_up(job_info(job_obj(complete=True))))
    assert d.trainer_up and conds(st)["Regenerating"]["reason"] == "Completed"
    # A running Job is never created twice.
    d, st = advance({"phase": "Regenerating"}, infra_up(job_info(job_obj())))
    assert not d.regenerate_job and not d.trainer_up and st["phase"] == "Regenerating"


def test_failed_job_fails_the_training_job_with_its_reason() -> None:
    _, st = advance({}, infra_up())
    failed = job_info(job_obj(failed=("BackoffLimitExceeded", "Job has reached the specified backoff limit")))
    d, st = advance(st, infra_up(failed), at=60)
    assert st["phase"] == "Failed" and d.workloads is Workloads.DOWN and d.result == "failed"
    c = conds(st)
    assert c["Failed"]["status"] == "True" and c["Failed"]["reason"] == "RegenerationFailed"
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in c["Failed"]["message"]
    assert c["Regenerating"]["status"] == "False" and c["Regenerating"]["reason"] == "BackoffLimitExceeded"
    assert c["Regenerating"]["message"] == "Job has reached the specified backoff limit"
    assert st["completionTime"]
    assert any(e.type == "Warning" and e.reason == "RegenerationFailed" for e in d.events)
    # With what the last failed pod said, when the reconciler could read it.
    obj = job_obj(failed=("PodFailurePolicy", "Container regenerate ... exit code 2 matching FailJob rule"))
    _, st3 = advance({}, infra_up(job_info(obj, pod_failure="exit code 2: --input: no such file")))
    assert conds(st3)["Failed"]["message"].endswith("; its last failed pod: exit code 2: --input: no such file")
    assert "PodFailurePolicy" in conds(st3)["Failed"]["message"]
    # Sticky.
    d, st2 = advance(st, infra_up(job_info(job_obj(complete=True))), at=90)
    assert st2["phase"] == "Failed" and d.workloads is Workloads.DOWN


def test_suspend_and_deadline_during_regeneration() -> None:
    _, st = advance({}, infra_up(job_info(job_obj())))
    spec = copy.deepcopy(REGEN)
    spec["runPolicy"] = {"suspend": True}
    d, sus = advance(st, infra_up(job_info(job_obj())), spec=spec, at=10)
    assert sus["phase"] == "Suspended" and d.workloads is Workloads.DOWN  # no trainer to checkpoint
    assert conds(sus)["Regenerating"]["status"] == "False"
    # Resume: back to the regeneration stage; the (deleted) Job is created again once inference is ready.
    d, st2 = advance(sus, infra_up(), at=20)
    assert st2["phase"] == "Regenerating" and d.regenerate_job and not d.trainer_up
    assert conds(st2)["Regenerating"]["status"] == "True"

    spec = copy.deepcopy(REGEN)
    spec["runPolicy"] = {"activeDeadlineSeconds": 30}
    d, late = advance(st, infra_up(job_info(job_obj())), spec=spec, at=3600)
    assert late["phase"] == "Failed" and conds(late)["Failed"]["reason"] == "DeadlineExceeded"
    assert conds(late)["Regenerating"]["status"] == "False" and d.workloads is Workloads.DOWN


def test_jobs_without_regenerate_have_no_regenerating_condition() -> None:
    d, st = advance({}, observed_up(1), spec={})
    assert st["phase"] == "Running" and d.trainer_up and not d.regenerate_job
    assert "Regenerating" not in conds(st)


# ----------------------------------------------------------------------------------- reconciler (fake API)


JOB_PATH = "/apis/batch/v1/namespaces/ns/jobs/demo-regenerate"
STS_PATH = "/apis/apps/v1/namespaces/ns/statefulsets/demo-trainer"
DSJ_PATH = "/apis/dspark.io/v1alpha1/namespaces/ns/dsparktrainingjobs/demo"


def _ready(api: FakeApi, path: str) -> None:
    obj = api.objects[path]
    obj["status"] = {"readyReplicas": obj["spec"]["replicas"], "updateRevision": "rev1"}


def test_reconciler_creates_the_job_once_and_starts_the_trainer_after_it() -> None:
    api = FakeApi()
    body = job_body(REGEN)
    body["status"] = {}
    api.objects[DSJ_PATH] = body
    rec = Reconciler(api, Settings(), OperatorMetrics(), LogEventSink())  # type: ignore[arg-type]

    async def scenario() -> None:
        out = await rec.reconcile("ns", "demo")
        assert out.result == "ok" and out.phase == "Pending"
        assert api.objects[STS_PATH]["spec"]["replicas"] == 0
        assert JOB_PATH not in api.objects and ("dry-run", JOB_PATH) in api.calls, "validated, not created"
        for dep in ("demo-mooncake", "demo-inference"):
            _ready(api, f"/apis/apps/v1/namespaces/ns/deployments/{dep}")
        out = await rec.reconcile("ns", "demo")
        assert out.phase == "Regenerating" and JOB_PATH in api.objects
        assert api.objects[STS_PATH]["spec"]["replicas"] == 0
        # Never re-applied, even when its spec hash would differ (a Job's template is immutable).
        api.objects[JOB_PATH]["metadata"]["annotations"]["dspark.io/spec-hash"] = "other"
        api.objects[JOB_PATH]["status"] = job_obj()["status"]
        before = api.calls.count(("apply", JOB_PATH))
        out = await rec.reconcile("ns", "demo")
        assert out.phase == "Regenerating" and api.calls.count(("apply", JOB_PATH)) == before
        # Complete: the trainer scales up; the Job stays.
        api.objects[JOB_PATH]["status"] = job_obj(complete=True)["status"]
        out = await rec.reconcile("ns", "demo")
        assert out.phase == "Starting" and api.objects[STS_PATH]["spec"]["replicas"] == 1
        assert JOB_PATH in api.objects
        regen = conds(api.objects[DSJ_PATH]["status"])["Regenerating"]
        assert regen["reason"] == "Completed"

    asyncio.run(scenario())


def test_reconciler_deletes_a_running_job_when_the_training_job_stops() -> None:
    api = FakeApi()
    spec = copy.deepcopy(REGEN)
    spec["runPolicy"] = {"activeDeadlineSeconds": 3}
    api.objects[DSJ_PATH] = job_body(spec)
    times = iter([NOW, NOW + dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=5)])
    rec = Reconciler(api, Settings(), OperatorMetrics(), LogEventSink(), clock=lambda: next(times))  # type: ignore[arg-type]

    async def scenario() -> None:
        await rec.reconcile("ns", "demo")
        for dep in ("demo-mooncake", "demo-inference"):
            _ready(api, f"/apis/apps/v1/namespaces/ns/deployments/{dep}")
        out = await rec.reconcile("ns", "demo")
        assert out.phase == "Regenerating" and JOB_PATH in api.objects
        api.objects[JOB_PATH]["status"] = job_obj()["status"]
        out = await rec.reconcile("ns", "demo")  # past the deadline
        assert out.phase == "Failed"
        assert JOB_PATH not in api.objects and ("delete", JOB_PATH) in api.calls
        assert conds(api.objects[DSJ_PATH]["status"])["Failed"]["reason"] == "DeadlineExceeded"

    asyncio.run(scenario())


# ----------------------------------------------------------------------------------- batch Job watch permission


class FakeAuthorization:
    def __init__(self, denied: set[tuple[str | None, str]] | None = None, fail: bool = False) -> None:
        self.denied = denied or set()
        self.fail = fail
        self.asked: list[tuple[str | None, str]] = []

    def create_self_subject_access_review(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise ConnectionError("no API server")
        attrs = body["spec"]["resourceAttributes"]
        assert (attrs["group"], attrs["resource"]) == ("batch", "jobs")
        key = (attrs.get("namespace"), attrs["verb"])
        self.asked.append(key)
        return {"status": {"allowed": key not in self.denied}}


def test_batch_jobs_are_watched_only_when_allowed() -> None:
    from dspark_operator.handlers import batch_jobs_watchable

    auth = FakeAuthorization()
    assert batch_jobs_watchable((), auth)
    assert auth.asked == [(None, "list"), (None, "watch")]
    auth = FakeAuthorization()
    assert batch_jobs_watchable(("a", "b"), auth)
    assert auth.asked == [("a", "list"), ("a", "watch"), ("b", "list"), ("b", "watch")]
    assert not batch_jobs_watchable(("a", "b"), FakeAuthorization({("b", "watch")}))
    assert not batch_jobs_watchable((), FakeAuthorization({(None, "list")}))
    assert batch_jobs_watchable((), FakeAuthorization(fail=True)), "unknown: watch (as before the check existed)"
