"""Bad specs, edits and cluster events against the real test control plane (kube-apiserver with its CEL admission
and the chart's ValidatingAdmissionPolicy, scheduler, controllers, kwok nodes) and `dspark-operator` as a
subprocess. One test per class of input that used to lose a job, its data or its children:

1. edits of a running job (admission, SpecRejected with the last good spec, immutable data-losing fields);
2. paths outside the job's persistent volume;
3. children the API server would never accept (caught before any child exists);
4. nothing half-created;
5. namespace deletion is no pod failure;
6. unschedulable jobs say why (Schedulable=False and an event);
7. validation gaps (blank model, target depth, queue name, hand edits of children, the trainer's token).

docs/operator.md lists every case and what happens. Every wait polls with a deadline."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.status_reporter import StatusReporter
from harness.cluster import LocalCluster
from operator_cluster_env import API, OperatorEnv, merged, small_job

pytestmark = pytest.mark.cluster

JOB_CHILDREN = 10  # ServiceAccount, Role, RoleBinding, ConfigMap, 3 Services, 2 Deployments, StatefulSet


def create(env: OperatorEnv, ns: str, body: dict[str, Any]) -> Any:
    """`kubectl create` (no last-applied annotation, so large specs fit), not checked."""
    return env.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(body), check=False)


def patch(env: OperatorEnv, ns: str, name: str, spec: dict[str, Any]) -> Any:
    """A merge patch of the job's spec, not checked."""
    return env.kubectl("patch", "-n", ns, "dsj", name, "--type=merge", "-p", json.dumps({"spec": spec}), check=False)


def condition(env: OperatorEnv, ns: str, name: str, ctype: str) -> dict[str, Any]:
    return env.condition(ns, name, ctype) or {}


def fingerprint(env: OperatorEnv, ns: str, name: str) -> dict[str, Any]:
    """What a job's children are built from: each child's spec hash and replicas, and the rendered job config."""
    out: dict[str, Any] = {}
    for key, obj in env.children(ns, name).items():
        out[key] = (
            (obj["metadata"].get("annotations") or {}).get("dspark.io/spec-hash"),
            (obj.get("spec") or {}).get("replicas"),
        )
        if key.startswith("ConfigMap/"):
            out["job.yaml"] = obj["data"]["job.yaml"]
    return out


# ----------------------------------------------------------------------------------- admission (CEL, schema)

REJECTED_AT_ADMISSION = [
    # what, spec sections merged into a small job, the field the error names, words of the fix
    ("blank target model", {"target": {"model": "   "}}, "spec.target.model", "must not be blank"),
    ("blank dataset path", {"dataset": {"path": " "}}, "spec.dataset.path", "must not be blank"),
    ("absolute checkpoint dir", {"trainer": {"output": {"checkpointDir": "/tmp/ckpt"}}},
     "spec.trainer.output.checkpointDir", "inside the output volume"),
    ("checkpoint dir climbing out", {"trainer": {"output": {"checkpointDir": "../ckpt"}}},
     "spec.trainer.output.checkpointDir", "lost with the pod"),
    ("draft dir climbing out", {"trainer": {"output": {"draftDir": "draft/../../x"}}},
     "spec.trainer.output.draftDir", "inside the output volume"),
    ("output over the job config", {"trainer": {"output": {"mountPath": "/etc/dspark"}}},
     "spec.trainer.output.mountPath", "use e.g. /output"),
    ("output over the dataset", {"trainer": {"output": {"mountPath": "/data"}}},
     "spec.trainer.output.mountPath", "/data: the dataset"),
    ("output at the root", {"trainer": {"output": {"mountPath": "/"}}}, "spec.trainer.output.mountPath", "absolute"),
    ("output over a system dir", {"trainer": {"output": {"mountPath": "/usr/local/out"}}},
     "spec.trainer.output.mountPath", "system directory"),
    ("draft inside the checkpoints", {"trainer": {"output": {"draftDir": "checkpoints/draft"}}},
     "spec.trainer.output.draftDir", "pruned"),
    ("metrics port = torchrun", {"metrics": {"port": 29500}}, "spec.metrics.port", "torchrun"),
    ("metrics port = Mooncake", {"metrics": {"port": 50051}}, "spec.metrics.port", "Mooncake master RPC"),
    ("duplicate env name", {"trainer": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
     "spec.trainer.env[1]", "Duplicate value"),
    ("env the operator sets", {"inference": {"env": [{"name": "DSPARK_JOB_CONFIG", "value": "/x"}]}},
     "spec.inference.env", "reserves"),
    ("env torchrun sets", {"trainer": {"env": [{"name": "MASTER_PORT", "value": "1"}]}}, "spec.trainer.env",
     "reserves"),
    ("NCCL_IB_HCA twice", {"transport": {"protocol": "rdma", "deviceNames": "mlx5_0"},
                           "trainer": {"env": [{"name": "NCCL_IB_HCA", "value": "mlx5_1"}]}},
     "spec.trainer.env", "transport.deviceNames"),
    ("oversized chat template", {"dataset": {"chatTemplate": "x" * (256 * 1024 + 1)}}, "spec.dataset.chatTemplate",
     "262144"),
    ("batch that does not divide", {"trainer": {"nodes": 3, "schedule": {"globalBatchSize": 10}}},
     "spec.trainer.schedule.globalBatchSize", "must be a multiple"),
    ("queue name that is no label value", {"scheduling": {"queueName": "team a"}}, "spec.scheduling.queueName",
     "label value"),
    ("scheduler name that is no DNS name", {"scheduling": {"schedulerName": "My_Scheduler"}},
     "spec.scheduling.schedulerName", "should match"),
    ("toleration Exists with a value", {"scheduling": {"tolerations": [{"key": "k", "operator": "Exists",
                                                                       "value": "v"}]}},
     "spec.scheduling.tolerations[0].value", "operator Exists"),
    ("tolerationSeconds without NoExecute", {"scheduling": {"tolerations": [{"key": "k", "tolerationSeconds": 5}]}},
     "spec.scheduling.tolerations[0].tolerationSeconds", "NoExecute"),
    ("reference engine with tensor parallelism", {"inference": {"engine": "reference", "tensorParallelSize": 2}},
     "spec.inference.tensorParallelSize", "engine reference"),
    ("split master weights without GPUs", {"trainer": {"gpusPerNode": 0, "optimizer": {"masterWeights": "split"}}},
     "spec.trainer.optimizer.masterWeights", "GPUs"),
    ("context shorter than a sample", {"inference": {"contextLength": 1024}, "dataset": {"maxLength": 2048}},
     "spec.inference.contextLength", "dataset.maxLength"),
    ("SGLang capturing the embedding", {"draft": {"targetLayerIds": [-1, 8]}}, "spec.draft.targetLayerIds",
     "embedding output"),
    ("GPUs in trainer.resources", {"trainer": {"resources": {"limits": {"nvidia.com/gpu": 2}}}},
     "spec.trainer.resources", "trainer.gpusPerNode"),
    ("micro batch out of range", {"trainer": {"schedule": {"microBatchSize": 0}}},
     "spec.trainer.schedule.microBatchSize", "greater than or equal to 1"),
    ("unknown dtype", {"target": {"dtype": "int8"}}, "spec.target.dtype", "Unsupported value"),
    ("replicas of the wrong type", {"inference": {"replicas": "many"}}, "spec.inference.replicas", "integer"),
    ("output neither on a claim nor ephemeral", {"trainer": {"output": {"ephemeral": False}}},
     "spec.trainer.output.claimName", "exactly one of claimName"),
]


@pytest.mark.parametrize(("what", "spec", "field", "words"), REJECTED_AT_ADMISSION,
                         ids=[c[0] for c in REJECTED_AT_ADMISSION])
def test_bad_specs_are_refused_at_admission_naming_the_field_and_the_fix(
    dsj_env: OperatorEnv, k8s_namespace: str, what: str, spec: dict[str, Any], field: str, words: str
) -> None:
    body = small_job("bad")
    body["spec"] = merged(body["spec"], spec)
    proc = create(dsj_env, k8s_namespace, body)
    assert proc.returncode != 0, f"{what}: accepted"
    assert field in proc.stderr and words in proc.stderr, f"{what}: {proc.stderr}"
    assert dsj_env.job(k8s_namespace, "bad") is None


# ----------------------------------------------------------------------------------- 1. edits of a running job

IMMUTABLE = [
    ({"dataset": {"path": "/data/other.jsonl"}}, "spec.dataset.path"),
    ({"dataset": {"claimName": "other-data"}}, "spec.dataset.claimName"),
    ({"trainer": {"output": {"checkpointDir": "ckpt-2"}}}, "spec.trainer.output.checkpointDir"),
    ({"trainer": {"output": {"draftDir": "draft-2"}}}, "spec.trainer.output.draftDir"),
    ({"trainer": {"output": {"mountPath": "/output2"}}}, "spec.trainer.output.mountPath"),
    ({"trainer": {"output": {"claimName": "new-volume"}}}, "spec.trainer.output.claimName"),
    ({"target": {"model": "Qwen/Qwen3-8B"}}, "spec.target.model"),
]


def test_fields_whose_change_would_lose_data_are_immutable(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    assert create(env, ns, small_job("imm")).returncode == 0
    env.wait_phase(ns, "imm", "Running")
    generation = env.job(ns, "imm")["metadata"]["generation"]  # type: ignore[index]
    for edit, field in IMMUTABLE:
        proc = patch(env, ns, "imm", edit)
        assert proc.returncode != 0, f"{field}: accepted"
        assert f"{field}: Invalid value" in proc.stderr and "immutable" in proc.stderr, proc.stderr
    job = env.job(ns, "imm")
    assert job is not None and job["metadata"]["generation"] == generation
    assert job["status"]["phase"] == "Running"


def test_an_edit_the_operator_rejects_leaves_the_job_running_on_its_last_good_spec(
    dsj_env: OperatorEnv, k8s_namespace: str
) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("edit", nodes=2))
    env.wait_phase(ns, "edit", "Running")
    env.wait(lambda: (env.job(ns, "edit") or {}).get("status", {}).get("acceptedGeneration") == 1,
             what="generation 1 accepted")
    before = fingerprint(env, ns, "edit")
    assert len(before) == JOB_CHILDREN + 1

    # Refused at admission: a micro batch that no longer divides the global batch (16 = 2 nodes x 1 GPU x 8).
    proc = patch(env, ns, "edit", {"trainer": {"schedule": {"microBatchSize": 3}}})
    assert proc.returncode != 0 and "spec.trainer.schedule.globalBatchSize" in proc.stderr, proc.stderr

    # Refused by the operator's own rules: a flag it derives, together with a change of the rendered config.
    assert patch(env, ns, "edit", {"inference": {"extraArgs": ["--tp-size=2"]},
                                   "trainer": {"checkpoint": {"intervalSteps": 7}}}).returncode == 0
    rejected = env.wait(
        lambda: (c := condition(env, ns, "edit", "SpecRejected")).get("observedGeneration") == 2 and c,
        what="SpecRejected for generation 2",
    )
    assert rejected["status"] == "True" and rejected["reason"] == "InvalidSpec"
    assert "spec.inference.extraArgs[0]" in rejected["message"] and "generation 1" in rejected["message"]
    assert fingerprint(env, ns, "edit") == before, "nothing of the rejected generation was applied"
    assert env.phase(ns, "edit") == "Running"

    # Refused by the API server (dry run of the whole child set): a node selector value that is no label value.
    assert patch(env, ns, "edit", {"inference": {"extraArgs": None},
                                   "scheduling": {"nodeSelector": {"pool": "has spaces!"}}}).returncode == 0
    rejected = env.wait(
        lambda: (c := condition(env, ns, "edit", "SpecRejected")).get("observedGeneration") == 3 and c,
        what="SpecRejected for generation 3",
    )
    assert "spec.scheduling.nodeSelector" in rejected["message"], rejected
    assert fingerprint(env, ns, "edit") == before
    assert "InvalidSpec" in env.events(ns, "edit")  # the Warning event of SpecRejected=True

    # A restarted operator still works from the last good spec (kept in the status) and still refuses the edit.
    env.operator.restart()
    count = env.operator.reconciles()
    env.kubectl("annotate", "dsj", "-n", ns, "edit", "poke=1")
    env.wait_reconciled(count)
    assert fingerprint(env, ns, "edit") == before
    assert condition(env, ns, "edit", "SpecRejected")["status"] == "True"

    # The fix is accepted as a whole: the config change of generation 2 and a new replica count.
    assert patch(env, ns, "edit", {"scheduling": {"nodeSelector": None}, "inference": {"replicas": 2}}).returncode == 0
    env.wait(lambda: condition(env, ns, "edit", "SpecRejected").get("reason") == "SpecAccepted", what="SpecAccepted")
    job = env.wait(
        lambda: (j := env.job(ns, "edit")) and j["status"].get("acceptedGeneration") == j["metadata"]["generation"]
        and j,
        what="the fixed generation accepted",
    )
    assert job["status"]["acceptedSpec"]["inference"]["replicas"] == 2
    env.wait(lambda: "intervalSteps: 7" in fingerprint(env, ns, "edit")["job.yaml"], what="the new job config")
    env.wait(lambda: len(env.pods(ns, "edit", "inference")) == 2, what="two inference replicas")
    env.wait_phase(ns, "edit", "Running")
    assert env.job(ns, "edit")["status"]["restarts"] == 0  # type: ignore[index]


# ----------------------------------------------------------------------------------- 3./4. never accepted children


def test_children_the_api_server_would_refuse_fail_the_job_before_any_child_exists(
    dsj_env: OperatorEnv, k8s_namespace: str
) -> None:
    env, ns = dsj_env, k8s_namespace
    cases = {
        # requests above limits: only the API server's pod validation says so (dry run of the StatefulSet)
        "limits": (small_job("limits", trainer={"resources": {"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}}),
                   "spec.trainer.resources"),
        # a job config beyond what a ConfigMap holds (free-form template variables are not bounded by the schema)
        "huge": (small_job("huge", dataset={"chatTemplate": "t" * 200_000,
                                            "chatTemplateKwargs": {"notes": "n" * 900_000}}),
                 "spec.dataset.chatTemplateKwargs"),
        # a flag the operator derives from the spec
        "flags": (small_job("flags", inference={"extraArgs": ["--context-length=99"]}), "spec.inference.extraArgs[0]"),
        # a target layer beyond the depth of a known target (Qwen3-0.6B has 28 layers)
        "depth": (small_job("depth", draft={"targetLayerIds": [1, 9, 30]}), "spec.draft.targetLayerIds"),
        # rdma asked for explicitly where no node advertises the RDMA resource
        "rdma": (small_job("rdma", transport={"protocol": "rdma", "rdmaResourceName": "example.com/no-such-hca"}),
                 "spec.transport.protocol"),
    }
    for body, _ in cases.values():
        proc = create(env, ns, body)
        assert proc.returncode == 0, proc.stderr
    for name, (_, field) in cases.items():
        env.wait_phase(ns, name, "Failed")
        failed = condition(env, ns, name, "Failed")
        assert failed["reason"] == "InvalidSpec" and failed["message"].startswith(f"{field}:"), failed
        assert env.children(ns, name) == {}, f"{name}: no ServiceAccount, Role, RoleBinding, ConfigMap or Service"
        assert "InvalidSpec" in env.events(ns, name)
    assert "28 layers" in condition(env, ns, "depth", "Failed")["message"]
    assert "ConfigMap" in condition(env, ns, "huge", "Failed")["message"]
    assert "cpu limit" in condition(env, ns, "limits", "Failed")["message"]
    assert "no node advertises example.com/no-such-hca" in condition(env, ns, "rdma", "Failed")["message"]
    assert env.operator.alive()


# ----------------------------------------------------------------------------------- 2. ephemeral output is no secret


def test_output_without_a_claim_is_reported_and_a_claim_is_persistent(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.bound_claims(ns, {"out": "ReadWriteMany"})
    env.apply(ns, small_job("eph"))
    env.apply(ns, small_job("pvc", trainer={"output": {"claimName": "out"}}))
    env.wait_phase(ns, "eph", "Running")
    env.wait_phase(ns, "pvc", "Running")
    eph = condition(env, ns, "eph", "OutputPersistent")
    assert (eph["status"], eph["reason"]) == ("False", "EmptyDir")
    assert "spec.trainer.output.claimName" in eph["message"]
    events = env.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=eph,type=Warning").stdout
    assert "EmptyDir" in events
    pvc = condition(env, ns, "pvc", "OutputPersistent")
    assert pvc["status"] == "True" and "PersistentVolumeClaim out" in pvc["message"]
    known = condition(env, ns, "pvc", "TargetLayersChecked")
    assert known["status"] == "True" and "Qwen/Qwen3-0.6B (28 layers)" in known["message"]


# ----------------------------------------------------------------------------------- 5. namespace deletion


def test_deleting_the_namespace_is_not_a_pod_failure(dsj_env: OperatorEnv, k8s_cluster: LocalCluster) -> None:
    env = dsj_env
    ns = k8s_cluster.create_namespace(f"doomed-{os.urandom(3).hex()}")
    env.apply(ns, small_job("doomed", nodes=2))
    env.wait_phase(ns, "doomed", "Running")
    env.wait(lambda: len(env.pods(ns, "doomed", "trainer")) == 2, what="the gang")
    restarts_before = env.operator.metrics().get("dspark_operator_gang_restarts_total", 0.0)
    errors_before = env.operator.reconciles("error")
    log_before = len(env.operator.log_path.read_text())
    env.kubectl("delete", "namespace", ns, "--wait=false")
    seen: list[dict[str, Any]] = []

    def gone() -> bool:
        job = env.job(ns, "doomed")
        if job is not None:
            seen.append(job.get("status") or {})
        return job is None and env.get(f"/api/v1/namespaces/{ns}") is None

    env.wait(gone, timeout=180, what=f"namespace {ns} to be deleted")
    assert all(s.get("restarts", 0) == 0 for s in seen), "a gang restart was counted"
    assert not any(c.get("type") == "Restarting" and c.get("status") == "True"
                   for s in seen for c in s.get("conditions") or [])
    assert all(s.get("phase") != "Failed" for s in seen)
    assert env.operator.metrics().get("dspark_operator_gang_restarts_total", 0.0) == restarts_before
    assert env.operator.reconciles("error") == errors_before, "no ReconcileError (the alert's input)"
    log = env.operator.log_path.read_text()[log_before:]
    assert "GangRestart" not in log and "ReconcileError" not in log, log[-3000:]


# ----------------------------------------------------------------------------------- 6. unschedulable jobs


def test_unschedulable_jobs_say_why(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    jobs = {
        "gpus": (small_job("gpus", gpus=16), "Unschedulable", "spec.trainer.gpusPerNode",
                 "Insufficient nvidia.com/gpu"),
        "prio": (small_job("prio", scheduling={"priorityClassName": "no-such-priority"}), "PriorityClassNotFound",
                 "spec.scheduling.priorityClassName", "no-such-priority does not exist"),
        "claim": (small_job("claim", trainer={"output": {"claimName": "later"}}), "PersistentVolumeClaimNotFound",
                  "spec.trainer.output.claimName", "later does not exist"),
        "sched": (small_job("sched", scheduling={"schedulerName": "no-such-scheduler"}), "SchedulerNotResponding",
                  "spec.scheduling.schedulerName", "no scheduler named 'no-such-scheduler'"),
    }
    for body, *_ in jobs.values():
        env.apply(ns, body)
    for name, (_, reason, field, words) in jobs.items():
        cond = env.wait(
            lambda n=name, r=reason: (c := condition(env, ns, n, "Schedulable")).get("reason") == r and c,
            timeout=90,
            what=f"{name}: Schedulable=False/{reason}",
        )
        assert cond["status"] == "False" and cond["message"].startswith(f"{field}:") and words in cond["message"], cond
        warnings = env.kubectl("get", "events", "-n", ns, "--field-selector",
                               f"involvedObject.name={name},type=Warning").stdout
        assert reason in warnings, warnings
        assert env.phase(ns, name) in ("Pending", "Starting")
    # The claim appears: the scheduler places the pods and the condition clears.
    env.bound_claims(ns, {"later": "ReadWriteMany"})
    env.wait_phase(ns, "claim", "Running", timeout=120)
    env.wait(lambda: condition(env, ns, "claim", "Schedulable").get("status") == "True", what="Schedulable again")


@pytest.fixture
def secret_node(k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A process-kubelet node: it really configures containers (kwok nodes do not), so a missing Secret shows."""
    if os.geteuid() != 0:
        pytest.skip("the process kubelet needs root")
    from harness.process_kubelet import ProcessKubelet

    kubelet = ProcessKubelet(k8s_cluster, Path(tmp_path_factory.mktemp("secret-kubelet")),
                             node_name="dspark-secret-node", labels={"dspark.io/secret-node": "true"})
    kubelet.start()
    try:
        yield "dspark-secret-node"
    finally:
        kubelet.stop()


def test_a_missing_secret_is_named(dsj_env: OperatorEnv, k8s_namespace: str, secret_node: str) -> None:
    env, ns = dsj_env, k8s_namespace
    body = small_job("secret", gpus=0, target={"hfTokenSecretRef": {"name": "hf-missing"}},
                     inference={"engine": "reference"},
                     scheduling={"nodeSelector": {"dspark.io/secret-node": "true"}})
    env.apply(ns, body)
    cond = env.wait(
        lambda: (c := condition(env, ns, "secret", "Schedulable")).get("reason") == "SecretNotFound" and c,
        timeout=90,
        what="Schedulable=False/SecretNotFound",
    )
    assert cond["message"].startswith("spec.target.hfTokenSecretRef:") and "hf-missing" in cond["message"], cond
    env.kubectl("delete", "dsj", "-n", ns, "secret", "--wait=false")
    env.wait(lambda: not env.pods(ns, "secret"), timeout=90, what="the pods to go")


# ----------------------------------------------------------------------------------- 7. children and the token


def test_hand_edits_of_children_are_taken_back(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("hand"))
    env.wait_phase(ns, "hand", "Running")
    children = env.children(ns, "hand")
    config = children["ConfigMap/hand-config"]["data"]
    ports = children["Service/hand-inference"]["spec"]["ports"]
    rules = children["Role/hand-trainer"]["rules"]
    env.kubectl("patch", "configmap", "-n", ns, "hand-config", "--type=merge", "-p",
                json.dumps({"data": {"job.yaml": "tampered: true\n"}}))
    env.kubectl("patch", "service", "-n", ns, "hand-inference", "--type=json", "-p",
                json.dumps([{"op": "replace", "path": "/spec/ports/0/port", "value": 31234}]))
    env.kubectl("patch", "role", "-n", ns, "hand-trainer", "--type=json", "-p",
                json.dumps([{"op": "add", "path": "/rules/-",
                             "value": {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}}]))

    def restored() -> bool:
        now = env.children(ns, "hand")
        return (
            now["ConfigMap/hand-config"]["data"] == config
            and [(p["name"], p["port"]) for p in now["Service/hand-inference"]["spec"]["ports"]]
            == [(p["name"], p["port"]) for p in ports]
            and now["Role/hand-trainer"]["rules"] == rules
        )

    env.wait(restored, timeout=60, what="the ConfigMap, Service and Role put back")
    assert env.phase(ns, "hand") == "Running"


def test_the_trainer_token_may_patch_progress_and_nothing_else(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("tok"))
    env.wait_phase(ns, "tok", "Running")
    sa = f"system:serviceaccount:{ns}:tok-trainer"
    job = "dsparktrainingjobs.dspark.io/tok"
    assert env.can_i("get", job, ns, sa)
    assert env.can_i("patch", job, ns, sa, subresource="status")  # RBAC grants the whole subresource ...
    assert not env.can_i("update", job, ns, sa, subresource="status")
    assert not env.can_i("patch", "dsparktrainingjobs.dspark.io/other", ns, sa, subresource="status")
    for verb, resource in (("patch", job), ("delete", job), ("list", "pods"), ("get", "secrets")):
        assert not env.can_i(verb, resource, ns, sa), (verb, resource)
    client = env.trainer_client(ns, "tok")
    path = f"{API}/namespaces/{ns}/dsparktrainingjobs/tok/status"
    # ... and the admission policy keeps it to status.progress: progress goes through (the reporter as in a pod),
    reporter = StatusReporter("tok", ns, min_interval=0, api_client=client)
    assert reporter.report({"state": "Running", "step": 7, "loss": 2.5, "accept_rate": [0.8]})
    # phase, restarts, conditions and the accepted spec do not.
    for forged in ({"phase": "Succeeded"}, {"restarts": 5, "progress": {"step": 8}}, {"conditions": []},
                   {"acceptedGeneration": 99}, {"draftPath": "/elsewhere"}, {"checkpointRequest": None}):
        status, text = env.request_as(client, "PATCH", path, {"status": forged})
        field = next(k for k in forged if k != "progress")
        if field == "checkpointRequest":  # there is none: removing it changes nothing, so it passes
            assert status == 200, text
            continue
        assert status == 403, (forged, status, text)
        assert f"status.{field} is written by the dspark operator only" in text, text
    job = env.job(ns, "tok")
    assert job is not None
    assert job["status"]["phase"] == "Running" and job["status"]["restarts"] == 0
    assert job["status"]["progress"]["step"] == 7 and job["status"]["progress"]["loss"] == 2.5
