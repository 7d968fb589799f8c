"""Data regeneration before training on the real test control plane: the operator creates the regeneration Job
(batch/v1, run by the real Job controller; kwok completes its pod with exit 0), keeps the trainer at zero replicas
while it runs, starts the trainer on the regenerated output when it succeeds, and fails the job with the Job's reason
when it fails (here: a pod that cannot be scheduled and the Job's activeDeadlineSeconds)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from operator_cluster_env import OperatorEnv
from test_operator_cluster import running_pods, small_job, workload_replicas

pytestmark = pytest.mark.cluster


def regen_job(name: str, **regenerate: Any) -> dict[str, Any]:
    body = small_job(name)
    body["spec"]["dataset"]["regenerate"] = {"cpus": 1, "memory": "64Mi", "shmSize": "64Mi", **regenerate}
    body["spec"]["trainer"]["output"] = {"claimName": "dspark-output"}
    return body


def batch_job(env: OperatorEnv, ns: str, name: str) -> dict[str, Any] | None:
    return env.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}-regenerate")


def phase_chain(env: OperatorEnv, ns: str, name: str) -> list[str]:
    """The job's phases in order, from its "phase A -> B" events (chained: event times have second precision)."""
    items = (env.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name={name}") or {}).get("items")
    edges: dict[str, str] = {}
    for e in items or []:
        if str(e.get("reason", "")).startswith("Phase"):
            head = str(e["message"]).split(":")[0].removeprefix("phase ")
            src, _, dst = head.partition(" -> ")
            edges[src] = dst
    chain, here = [], "None"
    while here in edges and len(chain) < 20:
        here = edges[here]
        chain.append(here)
    return chain


def test_regeneration_job_succeeds_then_training_starts(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.bound_claims(ns, {"dspark-output": "ReadWriteMany"})
    env.apply(ns, regen_job("regen", maxTokens=256, seed=3))
    job = env.wait_phase(ns, "regen", "Running", timeout=120)

    # The Job ran against this job's inference Service with the spec's sampling, and completed.
    bjob = batch_job(env, ns, "regen")
    assert bjob is not None
    (ref,) = bjob["metadata"]["ownerReferences"]
    assert ref["kind"] == "DSparkTrainingJob" and ref["uid"] == job["metadata"]["uid"] and ref["controller"]
    assert bjob["metadata"]["labels"]["app.kubernetes.io/component"] == "regenerate"
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in bjob["status"]["conditions"])
    (c,) = bjob["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[:2] == ["data", "regenerate"]
    assert args[args.index("--endpoint") + 1] == f"http://regen-inference.{ns}.svc:30000"
    assert args[args.index("--input") + 1] == "builtin:demo-conversations"
    assert args[args.index("--output") + 1] == "/output/regenerated"
    assert args[args.index("--max-tokens") + 1] == "256" and args[args.index("--seed") + 1] == "3"
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in bjob["spec"]["template"]["spec"]["volumes"]}
    assert claims["output"] == {"claimName": "dspark-output"}

    # Training reads the regenerated output, and its pods started only after the Job completed.
    children = env.children(ns, "regen")
    trainer_yaml = yaml.safe_load(children["ConfigMap/regen-config"]["data"]["job.yaml"])
    assert trainer_yaml["dataset"]["path"] == "/output/regenerated"
    done = bjob["status"]["completionTime"]
    trainer = running_pods(env, ns, "regen", "trainer")
    assert trainer and all(p["metadata"]["creationTimestamp"] >= done for p in trainer), (done, trainer)
    sts = children["StatefulSet/regen-trainer"]
    assert sts["spec"]["replicas"] == 1
    (tc,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": "output", "persistentVolumeClaim": {"claimName": "dspark-output"}} in sts["spec"]["template"][
        "spec"
    ]["volumes"]
    assert {"name": "output", "mountPath": "/output"} in tc["volumeMounts"]

    conds = {c["type"]: c for c in job["status"]["conditions"]}
    assert conds["Regenerating"]["status"] == "False" and conds["Regenerating"]["reason"] == "Completed"
    assert "/output/regenerated" in conds["Regenerating"]["message"]
    assert conds["Running"]["status"] == "True"
    # Pending -> Regenerating -> (Starting ->) Running, in that order.
    chain = env.wait(lambda: (c := phase_chain(env, ns, "regen")) and c[-1] == "Running" and c, what="phase events")
    assert chain[:2] == ["Pending", "Regenerating"] and chain[-1] == "Running", chain
    assert set(chain[2:-1]) <= {"Starting"}, chain

    # A restarted operator neither recreates the Job nor regenerates again.
    uid = bjob["metadata"]["uid"]
    env.operator.restart()
    count = env.operator.reconciles()
    env.kubectl("annotate", "dsj", "-n", ns, "regen", "poke=1")
    env.wait_reconciled(count)
    assert env.phase(ns, "regen") == "Running"
    assert (batch_job(env, ns, "regen") or {})["metadata"]["uid"] == uid


def test_regeneration_job_failure_fails_the_job_with_its_reason(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.bound_claims(ns, {"dspark-output": "ReadWriteMany"})
    # 200 CPUs fit on no node (kwok nodes have 96): the pod stays Pending until the Job's deadline fails the Job.
    env.apply(ns, regen_job("regfail", cpus=200, activeDeadlineSeconds=25))
    env.wait_phase(ns, "regfail", "Regenerating", timeout=90)
    bjob = env.wait(lambda: batch_job(env, ns, "regfail"), what="the regeneration Job")
    env.wait(
        lambda: (env.condition(ns, "regfail", "Regenerating") or {}).get("reason") == "JobRunning",
        what="the Regenerating condition",
    )
    # While regenerating, the trainer stays at zero replicas; inference and the Mooncake master are up.
    assert workload_replicas(env, ns, "regfail") == {
        "Deployment/regfail-inference": 1,
        "Deployment/regfail-mooncake": 1,
        "StatefulSet/regfail-trainer": 0,
    }
    assert not env.pods(ns, "regfail", "trainer")
    assert (env.condition(ns, "regfail", "TrainerReady") or {}).get("reason") == "WaitingForRegeneration"

    # An operator restart in the middle keeps the same Job and the phase.
    env.operator.restart(kill=True)
    count = env.operator.reconciles()
    env.kubectl("annotate", "dsj", "-n", ns, "regfail", "poke=1")
    env.wait_reconciled(count)
    assert env.phase(ns, "regfail") == "Regenerating"
    assert (batch_job(env, ns, "regfail") or {})["metadata"]["uid"] == bjob["metadata"]["uid"]
    assert workload_replicas(env, ns, "regfail")["StatefulSet/regfail-trainer"] == 0

    job = env.wait_phase(ns, "regfail", "Failed", timeout=90)
    failed = env.condition(ns, "regfail", "Failed")
    assert failed is not None and failed["status"] == "True" and failed["reason"] == "RegenerationFailed"
    assert "regfail-regenerate" in failed["message"] and "DeadlineExceeded" in failed["message"], failed
    regen = env.condition(ns, "regfail", "Regenerating")
    assert regen is not None and regen["status"] == "False" and regen["reason"] == "DeadlineExceeded"
    assert job["status"]["completionTime"]
    env.wait(lambda: set(workload_replicas(env, ns, "regfail").values()) == {0}, what="workloads scaled to zero")
    assert not env.pods(ns, "regfail", "trainer"), "the trainer never started"
    events = env.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=regfail").stdout
    assert "RegenerationFailed" in events


def test_api_server_enforces_the_regenerate_rules(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    # No output claim: the regenerated data would land on a volume the trainer does not see.
    body = regen_job("noclaim")
    del body["spec"]["trainer"]["output"]
    proc = env.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0 and "spec.trainer.output.claimName" in proc.stderr, proc.stderr
    proc = env.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(regen_job("badtemp", temperature=5)), check=False)
    assert proc.returncode != 0 and "spec.dataset.regenerate.temperature" in proc.stderr, proc.stderr
    # Defaults filled in by the API server; regenerate is immutable (added, changed or removed).
    env.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(regen_job("imm")))
    regen = (env.job(ns, "imm") or {})["spec"]["dataset"]["regenerate"]
    assert (regen["temperature"], regen["topP"], regen["topK"], regen["enableThinking"]) == (0.7, 0.8, 20, False)
    for patch in ({"temperature": 0.9}, None):
        proc = env.kubectl(
            "patch", "-n", ns, "dsj", "imm", "--type=merge", "-p",
            json.dumps({"spec": {"dataset": {"regenerate": patch}}}), check=False,
        )  # fmt: skip
        assert proc.returncode != 0 and "dataset.regenerate is immutable" in proc.stderr, proc.stderr
    env.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(small_job("plain")))
    proc = env.kubectl(
        "patch", "-n", ns, "dsj", "plain", "--type=merge", "-p",
        json.dumps({"spec": {"dataset": {"regenerate": {}}, "trainer": {"output": {"claimName": "x"}}}}), check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "dataset.regenerate is immutable" in proc.stderr, proc.stderr


def test_batch_job_permission_check_against_the_api_server(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    """The operator watches batch Jobs only with permission to (a chart with rbac.batchJobs=false must not stop it)."""
    from dspark_operator.handlers import batch_jobs_watchable
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    env, ns = dsj_env, k8s_namespace
    admin = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(env.cluster.kubeconfig), client_configuration=admin)
    assert batch_jobs_watchable((), k8s_client.AuthorizationV1Api(k8s_client.ApiClient(admin)))
    env.kubectl("create", "serviceaccount", "-n", ns, "no-batch")
    token = env.kubectl("create", "token", "-n", ns, "no-batch").stdout.strip()
    cfg = k8s_client.Configuration()
    cfg.host = env.cluster.server
    cfg.ssl_ca_cert = str(env.cluster.pki.ca.cert)
    cfg.api_key = {"BearerToken": token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    restricted = k8s_client.AuthorizationV1Api(k8s_client.ApiClient(cfg))
    assert not batch_jobs_watchable((ns,), restricted)
    assert not batch_jobs_watchable((), restricted)
