"""Bad specs, edits and cluster states, without a cluster: the operator's own rules, the choice of the spec a job
works from (a rejected edit keeps the last good one), the mapping of API refusals to spec fields, hand-edit
detection, the Schedulable verdict and the trainer-status admission policy. The same classes run against the
real test cluster in test_operator_bad_inputs_cluster.py."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import pytest
from dspark_operator import policy
from dspark_operator.acceptance import accept, choose_spec, effective_view
from dspark_operator.api.checks import CONFIGMAP_DATA_LIMIT, check_config_size
from dspark_operator.api.paths import mount_path_problem, relative_dir_problem
from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_operator.api.status import OPERATOR_STATUS_FIELDS
from dspark_operator.drift import drifted, drifted_child, quantity_value
from dspark_operator.metrics import OperatorMetrics
from dspark_operator.reconcile import APPLY, REVERT, LogEventSink, Reconciler, child_action, revert_patch
from dspark_operator.rejections import invalid_from_rejection
from dspark_operator.scheduling import CreateFailure, MissingObject, PodPlacement, placement_from_pod, verdict
from dspark_operator.settings import Settings
from dspark_operator.status import decide
from operator_helpers import NOW, FakeApi, assert_invalid, find, job_body, make_ctx, make_job, observed_up

DSJ = "/apis/dspark.io/v1alpha1/namespaces/ns/dsparktrainingjobs/demo"
CM = "/api/v1/namespaces/ns/configmaps/demo-config"
STS = "/apis/apps/v1/namespaces/ns/statefulsets/demo-trainer"
SMALL = {"trainer": {"nodes": 1, "gpusPerNode": 1, "schedule": {"globalBatchSize": 8}}}

# ------------------------------------------------------------------------------------------ spec rules


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"target": {"model": "  "}}, "spec.target.model", "blank"),
        ({"target": {"model": "Qwen/Qwen3-8B "}}, "spec.target.model", "whitespace"),
        ({"dataset": {"path": " "}}, "spec.dataset.path", "blank"),
        ({"trainer": {"output": {"checkpointDir": "/tmp/ckpt"}}}, "spec.trainer.output.checkpointDir", "absolute"),
        ({"trainer": {"output": {"draftDir": "out/../../x"}}}, "spec.trainer.output.draftDir", "'..'"),
        ({"trainer": {"output": {"mountPath": "/etc/dspark"}}}, "spec.trainer.output.mountPath", "job config"),
        ({"trainer": {"output": {"mountPath": "/etc"}}}, "spec.trainer.output.mountPath", "/etc/dspark"),
        ({"trainer": {"output": {"mountPath": "/data/out"}}}, "spec.trainer.output.mountPath", "dataset"),
        ({"trainer": {"output": {"mountPath": "/out/"}}}, "spec.trainer.output.mountPath", "trailing"),
        ({"trainer": {"output": {"mountPath": "/usr/out"}}}, "spec.trainer.output.mountPath", "/usr"),
        ({"trainer": {"output": {"draftDir": "ck/d", "checkpointDir": "ck"}}}, "spec.trainer.output", "pruned"),
        ({"metrics": {"port": 29500}}, "spec.metrics.port", "torchrun"),
        ({"metrics": {"port": 50051}}, "spec.metrics.port", "Mooncake"),
        ({"trainer": {"env": [{"name": "A"}, {"name": "A"}]}}, "spec.trainer.env[1].name", "already set"),
        ({"trainer": {"env": [{"name": "MASTER_PORT", "value": "1"}]}}, "spec.trainer.env[0].name", "reserved"),
        ({"inference": {"env": [{"name": "DSPARK_JOB_CONFIG"}]}}, "spec.inference.env[0].name", "reserved"),
        (
            {"transport": {"protocol": "rdma", "deviceNames": "mlx5_0"}, "trainer": {"env": [{"name": "NCCL_IB_HCA"}]}},
            "spec.trainer.env[0].name",
            "deviceNames",
        ),
        ({"trainer": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}, "spec.trainer.resources", "gpusPerNode"),
        ({"inference": {"resources": {"requests": {"rdma/hca": 1}}}}, "spec.inference.resources.requests", "RDMA"),
        ({"inference": {"engine": "reference", "tensorParallelSize": 2}}, "spec.inference.tensorParallelSize", "1"),
        ({"inference": {"contextLength": 2048}}, "spec.inference.contextLength", "maxLength"),
        ({"draft": {"targetLayerIds": [-1, 4]}}, "spec.draft.targetLayerIds", "embedding"),
        (
            {
                "trainer": {
                    "gpusPerNode": 0,
                    "optimizer": {"masterWeights": "split"},
                    "schedule": {"globalBatchSize": 8},
                }
            },
            "spec.trainer.optimizer.masterWeights",
            "GPUs",
        ),
        ({"draft": {"targetLayerIds": [1, 9, 40]}}, "spec.draft.targetLayerIds", "36 layers"),
        (
            {"target": {"model": "Qwen/Qwen3-0.6B"}, "draft": {"numTargetLayersCaptured": 30}},
            "spec.draft.numTargetLayersCaptured",
            "28 layers",
        ),
        ({"scheduling": {"queueName": "has spaces"}}, "spec.scheduling.queueName", "label value"),
        ({"scheduling": {"schedulerName": "My_Scheduler"}}, "spec.scheduling.schedulerName", "match"),
        ({"scheduling": {"tolerations": [{"key": "a", "operator": "Exists", "value": "x"}]}}, "spec.scheduling", "Exi"),
        ({"scheduling": {"tolerations": [{"key": "a", "tolerationSeconds": 3}]}}, "spec.scheduling", "NoExecute"),
        ({"scheduling": {"tolerations": [{"operator": "Equal"}]}}, "spec.scheduling.tolerations[0].operator", "key"),
        ({"dataset": {"chatTemplate": "x" * (256 * 1024 + 1)}}, "spec.dataset.chatTemplate", "at most"),
        ({"trainer": {"schedule": {"microBatchSize": 100000}}}, "spec.trainer.schedule.microBatchSize", "65536"),
        ({"trainer": {"export": {"destination": "/mnt/x"}}}, "spec.trainer.export.destination", "s3://BUCKET/PREFIX"),
        ({"trainer": {"export": {"destination": "s3://drafts/x"}}}, "spec.trainer.export.credentialsSecret",
         "AWS_ACCESS_KEY_ID"),
        ({"trainer": {"export": {"destination": "hf://org/draft"}}}, "spec.trainer.export.credentialsSecret",
         "HF_TOKEN"),
        ({"trainer": {"export": {"credentialsSecret": "s3"}}}, "spec.trainer.export.destination", "only used"),
        ({"trainer": {"export": {"destination": "hf://org/d", "credentialsSecret": "t", "s3Region": "eu"}}},
         "spec.trainer.export.s3EndpointUrl", "only used with an s3://"),
    ],
)
def test_bad_specs_name_the_field_and_the_fix(spec: dict[str, Any], field: str, words: str) -> None:
    assert_invalid(spec, field, words)


def test_paths_rules() -> None:
    assert relative_dir_problem("f", "draft/v1", "draft") is None
    assert relative_dir_problem("f", ".hidden", "draft") is not None
    assert mount_path_problem("/output") is None and mount_path_problem("/mnt/out") is None
    assert mount_path_problem("/var/run/secrets") is not None  # holds the token mount


def test_the_rendered_config_must_fit_a_configmap() -> None:
    spec = DSparkTrainingJobSpec.model_validate(job_body()["spec"])
    assert check_config_size(spec, 1000) is None
    big = DSparkTrainingJobSpec.model_validate(
        job_body({"dataset": {"chatTemplateKwargs": {"blob": "x" * 900_000}, "chatTemplate": "y" * 200_000}})["spec"]
    )
    problem = check_config_size(big, CONFIGMAP_DATA_LIMIT)
    assert problem is not None and problem.field == "spec.dataset.chatTemplateKwargs"
    assert_invalid(
        {"dataset": {"chatTemplateKwargs": {"blob": "x" * 900_000}, "chatTemplate": "y" * 200_000}},
        "spec.dataset.chatTemplateKwargs",
        "ConfigMap",
    )


# ------------------------------------------------------------------------------------------ the spec a job uses


def _accepted_status(generation: int = 1, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"phase": "Running", "acceptedGeneration": generation, "acceptedSpec": job_body(spec)["spec"]}


def test_a_new_invalid_job_has_nothing_to_fall_back_to() -> None:
    job = make_job({"inference": {"extraArgs": ["--port=1"]}})
    choice = choose_spec(job)
    assert choice.spec is None and choice.rejected is not None
    view = effective_view(job, choice)
    assert view.invalid is not None and view.rejected is None
    d = decide(view, observed_up(), NOW)
    failed = d.status.condition("Failed")
    assert d.status.phase == "Failed" and failed is not None and failed.reason == "InvalidSpec"


def test_a_rejected_edit_keeps_the_running_job_on_its_last_good_spec() -> None:
    edit = {"inference": {"extraArgs": ["--tp-size=2"], "replicas": 3}}
    bad = make_job(edit, generation=2, status=_accepted_status())
    choice = choose_spec(bad)
    assert choice.spec is not None and choice.generation == 1 and not choice.candidate
    assert choice.spec.inference.replicas == 1, "the last good spec, not the edit"
    view = effective_view(bad, choice)
    d = decide(view, observed_up(), NOW)
    assert d.status.phase == "Running" and d.status.observed_generation == 2
    rejected = d.status.condition("SpecRejected")
    assert rejected is not None and rejected.status == "True" and rejected.reason == "InvalidSpec"
    assert "spec.inference.extraArgs[0]" in rejected.message and "generation 1" in rejected.message
    assert [e.type for e in d.events if e.reason == "InvalidSpec"] == ["Warning"]
    assert d.status.accepted_generation == 1
    # The fix is accepted: SpecRejected turns False.
    status = {**_accepted_status(), "conditions": [c.to_wire() for c in d.status.conditions]}
    good = make_job({"inference": {"replicas": 3}}, generation=3, status=status)
    choice = choose_spec(good)
    assert choice.candidate and choice.spec is not None and choice.spec.inference.replicas == 3
    view = accept(effective_view(good, choice))
    d = decide(view, observed_up(inference=3), NOW)
    assert d.status.accepted_generation == 3 and d.status.accepted_spec == good.raw_spec
    assert d.status.condition("SpecRejected").reason == "SpecAccepted"  # type: ignore[union-attr]


def test_a_dry_run_rejection_falls_back_too() -> None:
    job = make_job({"inference": {"replicas": 2}}, generation=2, status=_accepted_status())
    choice = choose_spec(job, rejected=invalid_from_rejection({"kind": "Deployment"}, {}, "nope"))
    assert choice.spec is not None and choice.generation == 1 and choice.rejected is not None


def _reconciler(api: FakeApi, **settings: Any) -> Reconciler:
    return Reconciler(api, Settings(**settings), OperatorMetrics(), LogEventSink())  # type: ignore[arg-type]


def test_the_reconciler_validates_the_whole_set_before_creating_anything() -> None:
    api = FakeApi()
    api.objects[DSJ] = job_body(SMALL)
    api.reject[STS] = (
        422,
        {
            "reason": "Invalid",
            "message": "StatefulSet is invalid",
            "details": {
                "causes": [
                    {
                        "field": "spec.template.spec.containers[0].resources.requests",
                        "message": 'Invalid value: "8": must be less than or equal to cpu limit of 4',
                    }
                ]
            },
        },
    )
    rec = _reconciler(api)
    out = asyncio.run(rec.reconcile("ns", "demo"))
    assert out.phase == "Failed"
    failed = {c["type"]: c for c in api.objects[DSJ]["status"]["conditions"]}["Failed"]
    assert failed["reason"] == "InvalidSpec" and failed["message"].startswith("spec.trainer.resources:")
    assert [k for k in api.objects if k != DSJ] == [], "no ServiceAccount, Role, RoleBinding, ConfigMap or Service"
    assert not any(call == "apply" for call, _ in api.calls)


def test_the_reconciler_keeps_the_children_of_the_last_good_spec() -> None:
    api = FakeApi()
    api.objects[DSJ] = job_body(SMALL)
    rec = _reconciler(api)
    asyncio.run(rec.reconcile("ns", "demo"))
    status = api.objects[DSJ]["status"]
    assert status["acceptedGeneration"] == 1 and status["acceptedSpec"] == api.objects[DSJ]["spec"]
    config = copy.deepcopy(api.objects[CM]["data"])
    # An edit whose StatefulSet the API server refuses (the dry run), with a ConfigMap change in the same edit.
    edited = job_body({**SMALL, "trainer": {**SMALL["trainer"], "checkpoint": {"intervalSteps": 7}}}, generation=2)
    api.objects[DSJ]["spec"] = edited["spec"]
    api.objects[DSJ]["metadata"]["generation"] = 2
    api.reject[STS] = (422, {"message": "bad", "details": {"causes": [{"field": "spec.template.spec.nodeSelector"}]}})
    applies = sum(1 for call, _ in api.calls if call == "apply")
    asyncio.run(rec.reconcile("ns", "demo"))
    assert api.objects[CM]["data"] == config, "nothing of the rejected generation is applied"
    assert sum(1 for call, _ in api.calls if call == "apply") == applies
    status = api.objects[DSJ]["status"]
    rejected = {c["type"]: c for c in status["conditions"]}["SpecRejected"]
    assert rejected["status"] == "True" and "spec.scheduling.nodeSelector" in rejected["message"]
    assert status["acceptedGeneration"] == 1 and status.get("phase") != "Failed"
    # Remembered: the next pass does not dry-run generation 2 again.
    dry_runs = sum(1 for call, _ in api.calls if call == "dry-run")
    asyncio.run(rec.reconcile("ns", "demo"))
    assert sum(1 for call, _ in api.calls if call == "dry-run") == dry_runs


# ------------------------------------------------------------------------------------------ hand edits


def test_hand_edits_are_detected_on_the_fields_the_operator_sets() -> None:
    ctx = make_ctx(SMALL)
    from dspark_operator.builders import build_children

    children = build_children(ctx)
    cm, svc = find(children, "ConfigMap"), find(children, "Service", "inference")
    live = copy.deepcopy(cm)
    live["metadata"]["resourceVersion"] = "9"
    assert child_action(cm, live) is None
    live["data"]["job.yaml"] = "tampered: true\n"
    assert child_action(cm, live) == REVERT
    live_svc = copy.deepcopy(svc)
    live_svc["spec"].update(clusterIP="10.0.0.7", sessionAffinity="None")  # defaults of the API server
    assert child_action(svc, live_svc) is None
    live_svc["spec"]["ports"].append({"name": "extra", "port": 1, "protocol": "TCP"})
    assert child_action(svc, live_svc) == REVERT
    patch = revert_patch(svc)
    assert patch["spec"]["ports"] == svc["spec"]["ports"] and patch["metadata"]["labels"] == svc["metadata"]["labels"]
    other = copy.deepcopy(live_svc)
    other["metadata"]["annotations"]["dspark.io/spec-hash"] = "different"
    assert child_action(svc, other) == APPLY
    assert child_action(svc, None) == APPLY


def test_quantities_compare_by_value() -> None:
    assert quantity_value("1000m") == quantity_value("1") == quantity_value(1)
    assert quantity_value("1Gi") == quantity_value("1024Mi")
    assert quantity_value("10m") != quantity_value("20m")
    assert not drifted({"cpu": 4, "memory": "1024Mi"}, {"cpu": "4", "memory": "1Gi", "extra": 1})
    assert drifted({"cpu": "500m"}, {"cpu": "1"})
    assert drifted(["a"], ["a", "b"]) and not drifted({"a": {}}, {"a": {"b": 1}})
    assert drifted_child({"metadata": {"labels": {"x": "1"}}, "data": {}}, {"metadata": {"labels": {}}, "data": {}})


# ------------------------------------------------------------------------------------------ API refusals


def test_api_refusals_name_the_spec_field() -> None:
    ctx = make_ctx({**SMALL, "scheduling": {"queueName": "q"}})
    from dspark_operator.builders import build_children

    children = build_children(ctx)
    sts, dep, cm = find(children, "StatefulSet"), find(children, "Deployment", "inference"), find(children, "ConfigMap")

    def field(manifest: dict[str, Any], cause_field: str, message: str = "x") -> str:
        body = {"details": {"causes": [{"field": cause_field, "message": message}]}}
        return invalid_from_rejection(manifest, body, "refused").field

    assert field(sts, "spec.template.spec.containers[0].resources.requests") == "spec.trainer.resources"
    assert field(dep, "spec.template.spec.containers[0].resources.limits") == "spec.inference.resources"
    assert field(sts, "spec.template.spec.containers[0].env[3].name") == "spec.trainer.env"
    assert field(dep, "spec.template.spec.nodeSelector") == "spec.scheduling.nodeSelector"
    assert field(dep, "spec.template.spec.tolerations[0].operator") == "spec.scheduling.tolerations"
    assert field(dep, "metadata.labels", "kueue.x-k8s.io/queue-name: invalid") == "spec.scheduling.queueName"
    assert field(cm, "data", "Too long: must have at most 1048576 bytes") == "spec.dataset.chatTemplate"
    message = invalid_from_rejection(sts, {}, "something else").message
    assert "StatefulSet demo-trainer" in message and "something else" in message


# ------------------------------------------------------------------------------------------ schedulability


def _pod(name: str = "demo-trainer-0", **kw: Any) -> PodPlacement:
    base: dict[str, Any] = {"component": "trainer", "phase": "Pending", "created": NOW}
    return PodPlacement(name=name, **{**base, **kw})


def test_schedulable_says_why() -> None:
    later = NOW + dt.timedelta(seconds=120)

    def v(*pods: PodPlacement, **kw: Any) -> Any:
        return verdict(pods, kw.pop("missing", ()), kw.pop("failures", ()), now=later, grace_seconds=60, **kw)

    gpus = v(_pod(scheduled="False", scheduled_reason="Unschedulable",
                  scheduled_message="0/13 nodes are available: 13 Insufficient nvidia.com/gpu."))
    assert (gpus.schedulable, gpus.reason) == (False, "Unschedulable")
    assert gpus.message.startswith("spec.trainer.gpusPerNode: pod demo-trainer-0") and "Insufficient" in gpus.message
    missing = v(missing=[MissingObject("spec.trainer.output.claimName", "PersistentVolumeClaim", "out")])
    assert missing.reason == "PersistentVolumeClaimNotFound" and "spec.trainer.output.claimName" in missing.message
    failed = v(failures=[CreateFailure("StatefulSet/demo-trainer", 'no PriorityClass with name x was found')])
    assert failed.reason == "FailedCreate" and "PriorityClass" in failed.message
    nobody = v(_pod(scheduler_name="nope"))
    assert nobody.reason == "SchedulerNotResponding" and "'nope'" in nobody.message
    young = verdict([_pod(scheduler_name="nope")], (), (), now=NOW + dt.timedelta(seconds=5), grace_seconds=60)
    assert young.schedulable
    secret = v(_pod(phase="Pending", node_name="n", scheduled="True", waiting_reason="CreateContainerConfigError",
                    waiting_message='secret "hf" not found'),
               secret_field=("spec.target.hfTokenSecretRef", "hf"))
    assert secret.reason == "SecretNotFound" and secret.message.startswith("spec.target.hfTokenSecretRef")
    ok = v(_pod(phase="Running", node_name="n", scheduled="True"))
    assert ok.schedulable and ok.reason == "Schedulable"


def test_placement_from_a_pod_object() -> None:
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T12:00:00Z"},
        "spec": {"schedulerName": "volcano"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "m"}],
        },
    }
    p = placement_from_pod(pod, "inference")
    assert (p.scheduler_name, p.scheduled, p.scheduled_reason, p.created) == ("volcano", "False", "Unschedulable", NOW)


def test_schedulable_condition_is_a_warning_event_when_false() -> None:
    from dspark_operator.scheduling import Verdict

    observed = observed_up()
    observed = type(observed)(**{**observed.__dict__, "schedulable": Verdict(False, "Unschedulable", "why")})
    d = decide(make_job(), observed, NOW)
    cond = d.status.condition("Schedulable")
    assert cond is not None and cond.status == "False" and cond.message == "why"
    assert [e.type for e in d.events if e.reason == "Unschedulable"] == ["Warning"]


def test_target_layers_checked_is_unknown_for_an_unknown_target() -> None:
    d = decide(make_job({"target": {"model": "/models/custom"}}), observed_up(), NOW)
    cond = d.status.condition("TargetLayersChecked")
    assert cond is not None and cond.status == "Unknown" and cond.reason == "TargetConfigUnknown"
    known = decide(make_job(), observed_up(), NOW).status.condition("TargetLayersChecked")
    assert known is not None and known.status == "True" and "[1, 9, 17, 25, 33]" in known.message


# ------------------------------------------------------------------------------------------ trainer token policy


def test_the_trainer_status_policy_guards_every_operator_field() -> None:
    spec = policy.policy_spec()
    guarded = [v["expression"] for v in spec["validations"]]
    assert len(guarded) == len(OPERATOR_STATUS_FIELDS)
    for field in OPERATOR_STATUS_FIELDS:
        assert f"object.?status.?{field} == oldObject.?status.?{field}" in guarded
    assert not any("progress" in g for g in guarded)
    assert all(v["reason"] == "Forbidden" and "status.progress" in v["message"] for v in spec["validations"])
