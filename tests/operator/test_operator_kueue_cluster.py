"""Gang admission with the real Kueue (built from its Go module): jobs with spec.scheduling.queueName are one Kueue
Workload each. Against the test cluster, the real Kueue controller manager, the operator and the process kubelet
(the jobs' pods run as local processes: a real trainer, capture server and Mooncake master):

- a ClusterQueue with quota for one job at a time: nothing of a second job starts (not a pod) until the first one
  is done; it waits as phase Queued with condition Admitted=False and status.clusterQueue;
- a higher-priority job preempts a running one: the victim checkpoints, scales down, gives its quota back and waits
  in the queue (no failure, no restart counted), then resumes from its checkpoint and trains exactly its samples.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.local.tiny_model import make_tiny_qwen3_target
from dspark_trainer.util.net import free_port
from dspark_trainer.util.polling import poll_until
from harness.cluster import LocalCluster
from harness.kueue import KueueProcess
from harness.process_kubelet import ProcessKubelet
from operator_cluster_env import OperatorEnv
from test_operator_e2e import GLOBAL_BATCH, MAX_STEPS, NODE_LABEL, job_manifest, progress, write_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TIMEOUT = 900.0
CLUSTER_QUEUE = "dspark-gpu"
LOCAL_QUEUE = "team"


@pytest.fixture(scope="module")
def kueue(k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueProcess]:
    try:
        proc = KueueProcess(k8s_cluster, tmp_path_factory.mktemp("kueue"))
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def kubelet(k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessKubelet]:
    if os.geteuid() != 0:
        msg = "the process kubelet needs root (private mount and PID namespaces)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    proc = ProcessKubelet(k8s_cluster, tmp_path_factory.mktemp("kueue-kubelet"), labels={NODE_LABEL: "true"})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def apply(env: OperatorEnv, body: dict[str, Any]) -> None:
    env.kubectl("apply", "-f", "-", input=json.dumps(body))


def queues(env: OperatorEnv, namespaces: list[str]) -> None:
    """One flavor, a ClusterQueue with quota for one job (3 pods of 100m CPU each), a LocalQueue per namespace,
    and two PriorityClasses."""
    apply(env, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "default"}})
    apply(env, {
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
        "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default", "resources": [
                {"name": "cpu", "nominalQuota": "400m"}, {"name": "memory", "nominalQuota": "2Gi"}]}]}],
        },
    })
    for ns in namespaces:
        apply(env, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                    "metadata": {"name": LOCAL_QUEUE, "namespace": ns}, "spec": {"clusterQueue": CLUSTER_QUEUE}})
    for name, value in (("dspark-low", 100), ("dspark-high", 1000)):
        apply(env, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                    "value": value, "preemptionPolicy": "Never"})


def queued_job(ns: str, name: str, priority: str) -> tuple[dict[str, Any], int]:
    """The e2e test's tiny job, in the LocalQueue with a priority, on fresh volumes; and its metrics port."""
    for claim in ("models", "data", "output"):
        shutil.rmtree(f"/tmp/{ns}-{claim}", ignore_errors=True)
    make_tiny_qwen3_target(Path(f"/tmp/{ns}-models") / "tiny", hidden_size=64, num_layers=6, vocab_size=512)
    write_dataset(Path(f"/tmp/{ns}-data") / "train.jsonl")
    port = free_port()
    body = job_manifest(name, port, free_port())
    body["spec"].pop("evaluation")
    body["spec"]["scheduling"].update({"queueName": LOCAL_QUEUE, "priorityClassName": priority})
    return body, port


def workload_finished(workload: dict[str, Any]) -> bool:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Finished" and c["status"] == "True" for c in conditions)


class Tracker:
    """Polls every job; records phases and which jobs had pods at the same time."""

    def __init__(self, env: OperatorEnv, jobs: dict[str, str]) -> None:
        self.env, self.jobs = env, jobs  # job name -> namespace
        self.phases: dict[str, list[str]] = {name: [] for name in jobs}
        self.overlaps: list[set[str]] = []
        self.t0 = time.monotonic()

    def poll(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with_pods: set[str] = set()
        for name, ns in self.jobs.items():
            job = self.env.job(ns, name) or {}
            out[name] = job
            phase = (job.get("status") or {}).get("phase") or "<none>"
            if not self.phases[name] or self.phases[name][-1] != phase:
                self.phases[name].append(phase)
            if any((p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                   for p in self.env.pods(ns, name)):
                with_pods.add(name)
        if len(with_pods) > 1:
            self.overlaps.append(with_pods)
        return out

    def until(self, predicate: Any, what: str, kubelet: ProcessKubelet, kueue: KueueProcess) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            jobs = self.poll()
            if predicate(jobs):
                return jobs
            if any((j.get("status") or {}).get("phase") == "Failed" for j in jobs.values()):
                break
            time.sleep(0.3)
        statuses = {n: {k: v for k, v in (j.get("status") or {}).items() if k not in ("acceptedSpec", "gang")}
                    for n, j in self.poll().items()}
        raise AssertionError(
            f"{what} not reached; phases {self.phases}\nstatuses: {json.dumps(statuses, indent=1)[-6000:]}\n"
            f"kubelet errors: {kubelet.errors[-5:]}\nkueue log:\n{kueue.log_tail(30)}\n"
            f"operator log:\n{self.env.operator.log_tail()}"
        )


def condition(job: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def test_kueue_admits_whole_gangs_within_quota_and_preemption_checkpoints_and_requeues(
    dsj_env: OperatorEnv, kueue: KueueProcess, kubelet: ProcessKubelet, k8s_cluster: LocalCluster,
) -> None:
    env = dsj_env
    suffix = os.urandom(3).hex()
    namespaces = {name: k8s_cluster.create_namespace(f"kq-{name}-{suffix}") for name in ("low", "waits", "high")}
    try:
        for ns in namespaces.values():
            env.bound_claims(ns, {"models": "ReadOnlyMany", "data": "ReadOnlyMany", "output": "ReadWriteOnce"})
        queues(env, list(namespaces.values()))
        tracker = Tracker(env, {name: ns for name, ns in namespaces.items()})

        # --- quota for one job: the first runs, the second waits without a single pod ------------------------
        low, low_port = queued_job(namespaces["low"], "low", "dspark-low")
        env.apply(namespaces["low"], low)
        tracker.until(lambda j: j["low"].get("status", {}).get("phase") == "Running", "low Running", kubelet, kueue)
        waits, _ = queued_job(namespaces["waits"], "waits", "dspark-low")
        env.apply(namespaces["waits"], waits)
        jobs = tracker.until(lambda j: j["waits"].get("status", {}).get("phase") == "Queued", "waits Queued",
                             kubelet, kueue)
        admitted = condition(jobs["low"], "Admitted")
        assert admitted["status"] == "True" and CLUSTER_QUEUE in admitted["message"], admitted
        assert jobs["low"]["status"]["clusterQueue"] == CLUSTER_QUEUE
        queued = condition(jobs["waits"], "Admitted")
        assert queued["status"] == "False" and queued["reason"] == "Queued", queued
        assert jobs["waits"]["status"]["clusterQueue"] == CLUSTER_QUEUE
        assert not env.pods(namespaces["waits"], "waits"), "a queued job must not start any pod"
        assert not [k for k in env.children(namespaces["waits"], "waits") if k.split("/")[0] in
                    ("Deployment", "StatefulSet")], "a queued job has no workloads"

        # --- a higher-priority job preempts the running one after its first checkpoint -------------------------
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            tracker.poll()
            p = progress(low_port) or {}
            if p.get("state") == "Running" and int(p.get("step") or 0) >= 6:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"low never reached step 6: {tracker.phases}")
        high, _ = queued_job(namespaces["high"], "high", "dspark-high")
        env.apply(namespaces["high"], high)
        jobs = tracker.until(
            lambda j: j["low"].get("status", {}).get("phase") == "Queued"
            and "Queued" in tracker.phases["low"][1:], "low preempted and queued again", kubelet, kueue)
        preempted = condition(jobs["low"], "Admitted")
        assert preempted["status"] == "False" and preempted["reason"] == "Preempted", preempted
        assert "checkpointed" in preempted["message"], preempted
        assert jobs["low"]["status"].get("restarts", 0) == 0
        assert not condition(jobs["low"], "Failed"), "a preemption is no failure"

        # --- everything finishes: high first, then the two low-priority jobs one after the other --------------
        jobs = tracker.until(
            lambda j: all((x.get("status") or {}).get("phase") == "Succeeded" for x in j.values()),
            "every job Succeeded", kubelet, kueue)
        assert not tracker.overlaps, f"jobs ran at the same time beyond the quota: {tracker.overlaps}"
        for name, job in jobs.items():
            status = job["status"]
            assert status["progress"]["samples"] == MAX_STEPS * GLOBAL_BATCH, (name, status["progress"])
            assert status.get("restarts", 0) == 0, (name, status)
        log = kubelet.log_tail(namespaces["low"], "low-trainer-0", "trainer", lines=400)
        assert "resum" in log.lower(), log[-2000:]
        # Kueue holds no quota for finished jobs (a Workload is Finished once its job's pods are gone).
        for name, ns in namespaces.items():
            path = f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/workloads/{name}-gang"
            poll_until(lambda path=path: workload_finished(env.get(path) or {}), timeout=TIMEOUT,
                       what=f"the Workload of {name} to be Finished", interval=0.5,
                       on_timeout=lambda path=path: json.dumps((env.get(path) or {}).get("status")))
        print(f"\nphases: {tracker.phases}; low preempted: {preempted['message']}; "
              f"took {time.monotonic() - tracker.t0:.0f}s")
    finally:
        for ns in namespaces.values():
            k8s_cluster.delete_namespace(ns)
            for claim in ("models", "data", "output"):
                shutil.rmtree(f"/tmp/{ns}-{claim}", ignore_errors=True)
