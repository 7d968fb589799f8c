"""The operator against the real test control plane (etcd, kube-apiserver, controller manager, scheduler,
kwok GPU nodes), with `dspark-operator` running as a subprocess. Every wait polls with a deadline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from dspark_trainer.status_reporter import StatusReporter
from harness.operator_process import small_job_manifest
from module_loader import load_module
from operator_cluster_env import REPO, OperatorEnv, small_job

pytestmark = pytest.mark.cluster

API = "/apis/dspark.io/v1alpha1"


def reporter_for(env: OperatorEnv, ns: str, job: str) -> StatusReporter:
    """A status reporter authenticated as the job's trainer ServiceAccount (as in a trainer pod)."""
    from kubernetes import client as k8s_client

    token = env.kubectl("create", "token", "-n", ns, f"{job}-trainer").stdout.strip()
    cfg = k8s_client.Configuration()
    cfg.host = env.cluster.server
    cfg.ssl_ca_cert = str(env.cluster.pki.ca.cert)
    cfg.api_key = {"BearerToken": token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return StatusReporter(job, ns, min_interval=0, api_client=k8s_client.ApiClient(cfg))


def running_pods(env: OperatorEnv, ns: str, job: str, component: str | None = None) -> list[dict[str, Any]]:
    return [
        p
        for p in env.pods(ns, job, component)
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def workload_replicas(env: OperatorEnv, ns: str, job: str) -> dict[str, int]:
    return {
        k: int(v["spec"]["replicas"])
        for k, v in env.children(ns, job).items()
        if k.split("/")[0] in ("Deployment", "StatefulSet")
    }


# ----------------------------------------------------------------------------------- examples


def _prepare_production_namespace(env: OperatorEnv, ns: str) -> None:
    """PVCs (bound to hostPath PVs), the HF token Secret and the PriorityClass the production example names."""
    env.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": "dspark-training"},
                "value": 1000,
            }
        ),
    )
    env.kubectl("create", "secret", "generic", "hf-token", "-n", ns, "--from-literal=token=hf_test")
    env.bound_claims(
        ns,
        {"dspark-models": "ReadOnlyMany", "dspark-datasets": "ReadOnlyMany", "dspark-output": "ReadWriteMany"},
        storage="10Gi",
    )


def test_examples_create_every_child_and_pods_run_on_gpu_nodes(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    _prepare_production_namespace(env, ns)
    log_start = len(env.operator.log_path.read_text())
    for example in ("minimal-job.yaml", "production-job.yaml"):
        body = yaml.safe_load((REPO / "examples" / example).read_text())
        # Without a queue: Kueue admission is tested with the real Kueue in test_operator_kueue_cluster.py.
        body["spec"].get("scheduling", {}).pop("queueName", None)
        env.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body))
    jobs = {
        yaml.safe_load((REPO / "examples" / f).read_text())["metadata"]["name"]: f
        for f in ("minimal-job.yaml", "production-job.yaml")
    }
    for name in jobs:
        job = env.wait_phase(ns, name, "Running", timeout=120)
        conds = {c["type"]: c["status"] for c in job["status"]["conditions"]}
        ready_types = ("Created", "InferenceReady", "TransportReady", "TrainerReady", "Running", "Ready")
        assert {conds[t] for t in ready_types} == {
            "True"
        }
        assert job["status"]["observedGeneration"] == job["metadata"]["generation"]
        kinds = sorted(k.split("/")[0] for k in env.children(ns, name))
        assert kinds == sorted(
            [
                "ServiceAccount",
                "ConfigMap",
                "Service",
                "Service",
                "Service",
                "Deployment",
                "Deployment",
                "StatefulSet",
                "Role",
                "RoleBinding",
            ]
        ), kinds
        for child in env.children(ns, name).values():
            (ref,) = child["metadata"]["ownerReferences"]
            assert ref["uid"] == job["metadata"]["uid"] and ref["controller"] and ref["blockOwnerDeletion"]

    prod = "qwen3-8b-draft-prod"
    trainer = running_pods(env, ns, prod, "trainer")
    inference = running_pods(env, ns, prod, "inference")
    assert len(trainer) == 2 and len(inference) == 4
    gpu_nodes = {
        n["metadata"]["name"]
        for n in env.get("/api/v1/nodes")["items"]  # type: ignore[index]
        if "nvidia.com/gpu" in n["status"]["capacity"]
    }
    for p in trainer + inference:
        assert p["spec"]["nodeName"] in gpu_nodes
        assert p["spec"]["priorityClassName"] == "dspark-training"
        assert "kueue.x-k8s.io/queue-name" not in p["metadata"]["labels"]  # Kueue queues the job's Workload
    (c,) = trainer[0]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["limits"]["rdma/hca"] == "1"
    assert c["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert not c["securityContext"].get("privileged")
    # The two trainer pods land on different nodes (8 GPUs each) and get ranks 0 and 1.
    assert len({p["spec"]["nodeName"] for p in trainer}) == 2
    assert sorted(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] for p in trainer) == ["0", "1"]
    out = env.kubectl("get", "dsj", "-n", ns).stdout
    assert "Running" in out and prod in out
    # What the API server stored compares equal to what was applied (defaults aside): no child looks hand-edited.
    count = env.operator.reconciles()
    env.kubectl("annotate", "dsj", "-n", ns, "--all", "settle=1")
    env.wait(lambda: env.operator.reconciles() >= count + 2, what="two more reconciliations")
    assert "edited by hand" not in env.operator.log_path.read_text()[log_start:]


# ----------------------------------------------------------------------------------- progress


def test_progress_from_the_trainer_reporter_shows_in_kubectl(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("prog"))
    env.apply(ns, small_job("other"))
    env.wait_phase(ns, "prog", "Running")
    env.wait_phase(ns, "other", "Running")
    reporter = reporter_for(env, ns, "prog")
    assert reporter.report(
        {
            "state": "Running",
            "step": 1234,
            "total": 5000,
            "loss": 1.875,
            "tau": 3.25,
            "epoch": 0.4,
            "accept_rate": [0.91, 0.8, 0.66],
            "throughput": 12.5,
            "samples": 9000,
        }
    )
    env.wait(lambda: "1234" in env.kubectl("get", "dsj", "prog", "-n", ns).stdout, what="the step column")
    table = env.kubectl("get", "dsj", "prog", "-n", ns).stdout.split("\n")
    header, row = table[0].split(), table[1].split()
    assert header[:7] == ["NAME", "PHASE", "READY", "STEP", "LOSS", "TAU", "AGE"]
    assert row[1] == "Running" and row[3:6] == ["1234", "1.875", "3.25"]
    wide = env.kubectl("get", "dsj", "prog", "-n", ns, "-o", "wide").stdout
    assert "5000" in wide and "TOTAL" in wide
    # The trainer's token may patch only this job's status.
    other = StatusReporter("other", ns, min_interval=0, api_client=reporter._client)
    assert not other.report({"step": 1})
    forbidden = reporter._client.call_api(
        *reporter._client.param_serialize(
            method="PATCH",
            resource_path=f"{API}/namespaces/{ns}/dsparktrainingjobs/prog",
            header_params={"Content-Type": "application/merge-patch+json"},
            body={"spec": {"runPolicy": {"suspend": True}}},
            auth_settings=["BearerToken"],
        )
    )
    assert forbidden.status == 403
    # The operator's next status writes keep the trainer's progress.
    env.merge_patch(ns, "prog", {"spec": {"inference": {"replicas": 2}}})
    env.wait(
        lambda: (env.condition(ns, "prog", "InferenceReady") or {}).get("message") == "2/2 inference replicas ready",
        what="two inference replicas",
    )
    assert env.job(ns, "prog")["status"]["progress"]["step"] == 1234  # type: ignore[index]


# ----------------------------------------------------------------------------------- failures


def test_trainer_pod_loss_restarts_the_gang_until_the_backoff_limit(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("gang", nodes=2, runPolicy={"backoffLimit": 1}))
    env.wait_phase(ns, "gang", "Running")
    env.wait(lambda: len(running_pods(env, ns, "gang", "trainer")) == 2, what="two trainer pods")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in running_pods(env, ns, "gang", "trainer")}
    env.kubectl("delete", "pod", "-n", ns, "gang-trainer-1", "--wait=false")
    env.wait(
        lambda: (
            (env.condition(ns, "gang", "Restarting") or {}).get("status") == "True"
            or (env.job(ns, "gang") or {}).get("status", {}).get("restarts") == 1
        ),
        what="the Restarting condition",
    )
    job = env.wait_phase(ns, "gang", "Running")
    assert job["status"]["restarts"] == 1
    restarting = env.condition(ns, "gang", "Restarting")
    assert restarting is not None and restarting["reason"] in ("GangRestart", "GangRunning")
    env.wait(lambda: len(running_pods(env, ns, "gang", "trainer")) == 2, what="the new gang")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in running_pods(env, ns, "gang", "trainer")}
    assert set(after) == set(before)
    assert all(after[n] != before[n] for n in before), "every trainer pod is replaced, not just the lost one"
    events = env.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=gang").stdout
    assert "GangRestart" in events

    # A second loss exceeds backoffLimit=1: Failed, everything scaled to zero.
    env.kubectl("delete", "pod", "-n", ns, "gang-trainer-0", "--wait=false")
    job = env.wait_phase(ns, "gang", "Failed")
    failed = env.condition(ns, "gang", "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded"
    assert job["status"]["restarts"] == 2 and job["status"]["completionTime"]
    env.wait(lambda: set(workload_replicas(env, ns, "gang").values()) == {0}, what="workloads scaled to zero")
    env.wait(lambda: not env.pods(ns, "gang"), what="the pods to go")


def test_completion_succeeds_scales_down_and_stays_terminal(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("done"))
    env.wait_phase(ns, "done", "Running")
    reporter = reporter_for(env, ns, "done")
    assert reporter.completed("/output/draft-final", step=100, total=100, loss=0.5)
    job = env.wait_phase(ns, "done", "Succeeded")
    assert job["status"]["draftPath"] == "/output/draft-final"
    assert job["status"]["completionTime"]
    env.wait(lambda: set(workload_replicas(env, ns, "done").values()) == {0}, what="children scaled down")
    env.wait(lambda: not env.pods(ns, "done"), what="the pods to go")
    # Sticky: a deleted child is not recreated and nothing scales up again.
    env.kubectl("delete", "statefulset", "-n", ns, "done-trainer")
    count = env.operator.reconciles()
    env.kubectl("annotate", "dsj", "-n", ns, "done", "poke=1")
    env.wait_reconciled(count)
    assert "StatefulSet/done-trainer" not in env.children(ns, "done")
    assert env.phase(ns, "done") == "Succeeded"
    assert set(workload_replicas(env, ns, "done").values()) == {0}


def test_active_deadline_fails_the_job(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("late", runPolicy={"activeDeadlineSeconds": 3}))
    job = env.wait_phase(ns, "late", "Failed", timeout=60)
    failed = env.condition(ns, "late", "Failed")
    assert failed is not None and failed["reason"] == "DeadlineExceeded"
    assert job["status"]["completionTime"]
    env.wait(lambda: set(workload_replicas(env, ns, "late").values()) == {0}, what="children scaled down")


def test_ttl_after_finished_deletes_the_job_and_its_children(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("ttl", runPolicy={"ttlSecondsAfterFinished": 2}))
    env.wait_phase(ns, "ttl", "Running")
    assert reporter_for(env, ns, "ttl").completed("/output/draft")
    env.wait_phase(ns, "ttl", "Succeeded")
    env.wait(lambda: env.job(ns, "ttl") is None, timeout=60, what="the job to be deleted after its TTL")
    env.wait(lambda: not env.children(ns, "ttl"), timeout=90, what="its children to be garbage-collected")


def test_suspend_checkpoints_then_scales_to_zero_and_resume_scales_back(
    dsj_env: OperatorEnv, k8s_namespace: str
) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("sus", nodes=2))
    env.wait_phase(ns, "sus", "Running")
    reporter = reporter_for(env, ns, "sus")
    env.merge_patch(ns, "sus", {"spec": {"runPolicy": {"suspend": True}}})
    request = env.wait(
        lambda: ((env.job(ns, "sus") or {}).get("status") or {}).get("checkpointRequest"),
        what="the checkpoint request",
    )
    assert request["reason"] == "Suspend"
    assert (env.condition(ns, "sus", "Suspended") or {}).get("reason") == "CheckpointRequested"
    assert set(workload_replicas(env, ns, "sus").values()) != {0}  # still up until the trainer checkpoints
    assert reporter.checkpoint_request(max_age=0) == request["id"]
    assert reporter.checkpointed("/output/checkpoints/step-42", step=42)
    job = env.wait_phase(ns, "sus", "Suspended")
    assert "checkpointRequest" not in job["status"]
    suspended = env.condition(ns, "sus", "Suspended")
    assert suspended is not None and suspended["status"] == "True" and suspended["reason"] == "Checkpointed"
    env.wait(lambda: set(workload_replicas(env, ns, "sus").values()) == {0}, what="scaled to zero")
    env.wait(lambda: not env.pods(ns, "sus"), what="no pods while suspended")

    env.merge_patch(ns, "sus", {"spec": {"runPolicy": {"suspend": False}}})
    env.wait_phase(ns, "sus", "Running")
    assert workload_replicas(env, ns, "sus") == {
        "Deployment/sus-inference": 1,
        "Deployment/sus-mooncake": 1,
        "StatefulSet/sus-trainer": 2,
    }
    resumed = env.condition(ns, "sus", "Suspended")
    assert resumed is not None and resumed["status"] == "False" and resumed["reason"] == "Resumed"
    assert len(running_pods(env, ns, "sus", "trainer")) == 2


def test_deleting_the_job_garbage_collects_every_child(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("gc", nodes=2))
    env.wait_phase(ns, "gc", "Running")
    assert len(env.children(ns, "gc")) == 10
    env.kubectl("delete", "dsj", "-n", ns, "gc", "--wait=false")
    env.wait(
        lambda: not env.children(ns, "gc") and not env.pods(ns, "gc"),
        timeout=90,
        what="every child to be garbage-collected",
    )


def test_operator_restart_changes_nothing_that_was_right(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    # Kill the operator in the middle of creating a job, then let a new one finish the work.
    env.operator.stop(kill=False)
    env.apply(ns, small_job("steady", nodes=2))
    env.operator.start()
    env.wait(lambda: env.children(ns, "steady"), what="the first children")
    env.operator.stop(kill=True)  # SIGKILL mid-reconcile (or just after)
    env.operator.start()
    env.wait_phase(ns, "steady", "Running")
    env.wait(lambda: len(running_pods(env, ns, "steady", "trainer")) == 2, what="the gang")

    def jobs_in_cluster() -> int:
        return len((env.get(f"{API}/dsparktrainingjobs") or {}).get("items") or [])

    def versions() -> dict[str, str]:
        objs = {**env.children(ns, "steady"), "Job": env.job(ns, "steady") or {}}
        for p in env.pods(ns, "steady"):
            objs[f"Pod/{p['metadata']['name']}"] = p
        return {k: v["metadata"]["resourceVersion"] for k, v in objs.items()}

    # Let the operator settle (one more full pass after Running), then restart it twice.
    count = env.operator.reconciles()
    env.kubectl("annotate", "dsj", "-n", ns, "steady", "settle=1")
    env.wait_reconciled(count)
    before = versions()
    for kill in (False, True):
        env.operator.restart(kill=kill)
        # On start the operator lists every job and reconciles each at least once.
        jobs = jobs_in_cluster()
        env.wait(lambda n=jobs: env.operator.reconciles() >= n, what="the restarted operator to reconcile every job")
        assert versions() == before
    assert env.job(ns, "steady")["status"]["restarts"] == 0  # type: ignore[index]


# ----------------------------------------------------------------------------------- validation

INVALID = [
    ("trainer.nodes is a string", {"trainer": {"nodes": "two"}}, "spec.trainer.nodes"),
    ("unknown protocol", {"transport": {"protocol": "carrier-pigeon"}}, "spec.transport.protocol"),
    ("negative replicas", {"inference": {"replicas": -1}}, "spec.inference.replicas"),
    ("negative backoff", {"runPolicy": {"backoffLimit": -3}}, "spec.runPolicy.backoffLimit"),
    ("unknown markov type", {"draft": {"markovHeadType": "lstm"}}, "spec.draft.markovHeadType"),
    ("bad quantity", {"trainer": {"resources": {"limits": {"memory": "lots"}}}}, "spec.trainer.resources.limits"),
    ("decreasing layer ids", {"draft": {"targetLayerIds": [9, 3]}}, "spec.draft.targetLayerIds"),
    ("gpus below tp", {"inference": {"tensorParallelSize": 4, "gpus": 2}}, "spec.inference.gpus"),
    (
        "lr below min",
        {"trainer": {"optimizer": {"learningRate": 0.001, "minLearningRate": 0.01}}},
        "spec.trainer.optimizer.minLearningRate",
    ),
]


@pytest.mark.parametrize(("what", "spec", "field"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_manifests_are_rejected_naming_the_field(
    dsj_env: OperatorEnv, k8s_namespace: str, what: str, spec: dict[str, Any], field: str
) -> None:
    body = small_job("bad")
    for key, value in spec.items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value}
    proc = dsj_env.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0, f"{what}: accepted"
    assert field in proc.stderr, f"{what}: {proc.stderr}"
    assert dsj_env.job(k8s_namespace, "bad") is None


def test_missing_required_unknown_fields_and_long_names_are_rejected(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    body = small_job("bad")
    del body["spec"]["target"]
    proc = env.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0 and "spec.target" in proc.stderr
    body = small_job("bad")
    body["spec"]["trainer"]["nodez"] = 2
    proc = env.kubectl("apply", "-n", ns, "--validate=strict", "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0 and "nodez" in proc.stderr
    proc = env.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(small_job("x" * 41)), check=False)
    assert proc.returncode != 0 and "metadata.name" in proc.stderr


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"target": {"model": "Qwen/Qwen3-32B"}}, "spec.target.model"),
        ({"draft": {"blockSize": 16}}, "spec.draft.blockSize"),
        ({"draft": {"targetLayerIds": [1, 2, 3]}}, "spec.draft.targetLayerIds"),
        ({"draft": {"markovRank": 64}}, "spec.draft.markovRank"),
    ],
)
def test_immutable_fields_cannot_change(
    dsj_env: OperatorEnv, k8s_namespace: str, patch: dict[str, Any], field: str
) -> None:
    env, ns = dsj_env, k8s_namespace
    body = small_job("imm")
    env.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(body))
    proc = env.kubectl("patch", "-n", ns, "dsj", "imm", "--type=merge", "-p", json.dumps({"spec": patch}), check=False)
    assert proc.returncode != 0, proc.stdout
    assert field in proc.stderr and "immutable" in proc.stderr, proc.stderr
    # Mutable fields still change.
    env.kubectl("patch", "-n", ns, "dsj", "imm", "--type=merge", "-p", '{"spec":{"inference":{"replicas":2}}}')


def test_spec_errors_the_schema_cannot_catch_fail_the_job_and_create_nothing(
    dsj_env: OperatorEnv, k8s_namespace: str
) -> None:
    env, ns = dsj_env, k8s_namespace
    flags = small_job("flags", inference={"extraArgs": ["--port=31000"]})  # a flag the operator derives
    label = small_job("label", scheduling={"nodeSelector": {"pool": "has spaces!"}})  # the API server rejects pods
    for body in (flags, label):
        env.apply(ns, body)
    for name, field in (("flags", "spec.inference.extraArgs[0]"), ("label", "spec.scheduling.nodeSelector")):
        env.wait_phase(ns, name, "Failed")
        failed = env.condition(ns, name, "Failed")
        assert failed is not None and failed["reason"] == "InvalidSpec"
        assert field in failed["message"], failed["message"]
        assert env.children(ns, name) == {}, "nothing is created for an invalid spec"
    events = env.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=flags").stdout
    assert "InvalidSpec" in events
    assert env.operator.alive()


# ----------------------------------------------------------------------------------- scale, metrics


@pytest.mark.slow
def test_fifty_jobs_applied_at_once_all_reach_running(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    docs = [small_job(f"many-{i:02d}", gpus=0) for i in range(50)]
    env.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def running() -> bool:
        items = (env.get(f"{API}/namespaces/{ns}/dsparktrainingjobs") or {}).get("items") or []
        return len(items) == 50 and all((i.get("status") or {}).get("phase") == "Running" for i in items)

    env.wait(running, timeout=420, what="50 jobs to be Running")
    assert len(env.list(ns, "v1", "pods", "app.kubernetes.io/managed-by=dspark-operator")) >= 50
    text = env.operator.metrics_text()
    assert 'dspark_operator_jobs{phase="Running"}' in text


def podmonitor_crd() -> Path:
    """The real PodMonitor CRD, from the Prometheus Operator Go module that the deploy tests pin and cache."""
    module = load_module("deploy_helpers", REPO / "tests" / "deploy" / "deploy_helpers.py")
    return next(p for p in module.monitoring_crds() if p.name.endswith("_podmonitors.yaml"))


def test_podmonitor_created_when_the_prometheus_operator_api_exists(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    """Uses the real PodMonitor CRD of the pinned Prometheus Operator module."""
    crd_file = podmonitor_crd()
    env, ns = dsj_env, k8s_namespace
    crd_name = "podmonitors.monitoring.coreos.com"
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}"
    existed = env.get(crd_path) is not None
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_file))
    try:
        env.wait(lambda: env.cluster.crd_established(crd_name), what="the PodMonitor CRD")
        env.operator.restart()  # the API's presence is cached for a few minutes
        env.apply(ns, small_job("mon"))
        env.wait_phase(ns, "mon", "Running")
        pm = env.wait(
            lambda: env.get(f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/podmonitors/mon"), what="the PodMonitor"
        )
        (ref,) = pm["metadata"]["ownerReferences"]
        assert ref["kind"] == "DSparkTrainingJob" and ref["name"] == "mon"
        assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} == {"metrics", "http"}
        assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "mon"
    finally:
        if not existed:
            env.kubectl("delete", "crd", "podmonitors.monitoring.coreos.com", "--wait=false", check=False)


def test_metrics_and_liveness(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.apply(ns, small_job("met"))
    env.wait_phase(ns, "met", "Running")
    samples = env.operator.metrics()
    assert samples['dspark_operator_jobs{phase="Running"}'] >= 1
    assert samples['dspark_operator_reconcile_total{result="ok"}'] >= 1
    assert samples["dspark_operator_reconcile_seconds_count"] >= 1
    assert "dspark_operator_gang_restarts_total" in samples
    assert samples["process_resident_memory_bytes"] > 0
    assert env.operator.alive()


def test_examples_are_valid_yaml_for_kubectl(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    for path in sorted(Path(REPO / "examples").glob("*.yaml")):
        proc = dsj_env.kubectl("apply", "--dry-run=server", "-n", k8s_namespace, "-f", str(path))
        assert "created (server dry run)" in proc.stdout, proc.stdout


def test_transport_auto_follows_the_nodes_rdma_resources(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    """protocol auto: RDMA when a node advertises transport.rdmaResourceName (the kwok GPU nodes have rdma/hca),
    else TCP; the choice is in the status and in the job config every pod reads."""
    ns = k8s_namespace
    for name, resource, want in (("auto-rdma", "rdma/hca", "rdma"), ("auto-tcp", "example.com/no-such-rdma", "tcp")):
        body = small_job_manifest(name)
        body["spec"]["transport"] = {"rdmaResourceName": resource, "masterResources": body["spec"]["transport"][
            "masterResources"]}
        dsj_env.apply(ns, body)
        dsj_env.wait(lambda n=name: (((dsj_env.job(ns, n) or {}).get("status") or {}).get("transportProtocol")),
                     timeout=60, what=f"{name}'s transport protocol")
        assert dsj_env.job(ns, name)["status"]["transportProtocol"] == want  # type: ignore[index]
        cm = dsj_env.get(f"/api/v1/namespaces/{ns}/configmaps/{name}-config")
        assert cm is not None and yaml.safe_load(cm["data"]["job.yaml"])["transport"]["protocol"] == want
        inference = dsj_env.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}-inference")
        assert inference is not None
        (c,) = inference["spec"]["template"]["spec"]["containers"]
        assert (resource in c["resources"].get("limits", {})) == (want == "rdma")
