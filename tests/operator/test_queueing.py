"""Kueue gang admission, pure parts: the Workload built from the children, what its status means, the status the
operator writes back, and the job's life around it (Queued, Admitted, eviction with a checkpoint)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from dspark_operator.builders import build_children
from dspark_operator.queueing import (
    KUEUE_NOT_INSTALLED,
    Admission,
    AdmissionState,
    admission_of,
    build_workload,
    finished,
    released,
)
from dspark_operator.scheduling import PodPlacement
from dspark_operator.status import Observed, Workloads
from operator_helpers import NOW, observed_up
from test_operator_builders import PROD, make_ctx
from test_operator_status import cond, run, running_status

QUEUED = {"scheduling": {"queueName": "team"}}


def workload(*conds: tuple[str, str, str], admission: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": t, "status": s, "reason": r, "message": f"{t} {r}"}
                                             for t, s, r in conds]}
    if admission is not None:
        status["admission"] = admission
    return {"metadata": {"name": "demo-gang", "generation": 1}, "status": status}


ADMITTED = workload(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"),
                    admission={"clusterQueue": "cq", "podSetAssignments": []})
EVICTED = workload(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"),
                   ("Evicted", "True", "Preempted"), admission={"clusterQueue": "cq", "podSetAssignments": []})


def test_workload_has_one_pod_set_per_role_with_the_rendered_templates() -> None:
    ctx = make_ctx(PROD)
    children = build_children(ctx)
    wl = build_workload(name="demo", namespace="ns", uid="u1", queue_name="team", manifests=children,
                        labels={"a": "b"}, priority=1000, priority_class_name="high")
    sets = {p["name"]: p for p in wl["spec"]["podSets"]}
    assert list(sets) == ["mooncake-master", "inference", "trainer"]
    trainer = next(m for m in children if m["kind"] == "StatefulSet")
    assert sets["trainer"]["count"] == trainer["spec"]["replicas"]
    assert sets["trainer"]["template"]["spec"] == trainer["spec"]["template"]["spec"]
    assert wl["spec"]["queueName"] == "team" and wl["spec"]["priority"] == 1000
    assert wl["spec"]["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"}
    assert wl["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"
    (ref,) = wl["metadata"]["ownerReferences"]
    assert ref["uid"] == "u1" and ref["controller"] and ref["kind"] == "DSparkTrainingJob"


def test_admission_of_reads_the_workload_conditions() -> None:
    assert admission_of(None).state is AdmissionState.MISSING
    pending = workload(("QuotaReserved", "False", "Pending"))
    assert admission_of(pending).state is AdmissionState.QUEUED and admission_of(pending).reason == "Pending"
    assert admission_of(ADMITTED) == Admission(AdmissionState.ADMITTED, "cq", "Admitted", "Admitted Admitted")
    ev = admission_of(EVICTED)
    assert ev.state is AdmissionState.EVICTED and ev.reason == "Preempted" and ev.cluster_queue == "cq"
    done = workload(("Finished", "True", "Succeeded"))
    assert admission_of(done).state is AdmissionState.FINISHED


def test_released_gives_the_quota_back_and_requeues_a_preempted_workload() -> None:
    out = released(EVICTED, NOW)
    conds = {c["type"]: c for c in out["status"]["conditions"]}
    assert "admission" not in out["status"]
    assert conds["QuotaReserved"]["status"] == "False" and conds["Admitted"]["status"] == "False"
    assert conds["Requeued"]["status"] == "True" and conds["Requeued"]["reason"] == "Preempted"
    assert admission_of(out).state is AdmissionState.QUEUED
    assert "admission" in EVICTED["status"]  # the input is not changed
    fin = finished(ADMITTED, succeeded=True, message="done", now=NOW)
    assert admission_of(fin).state is AdmissionState.FINISHED


def test_a_queued_job_creates_nothing_until_admitted() -> None:
    d, st = run(QUEUED, Observed())
    assert d.workloads is Workloads.DOWN and d.workload_action == "create"
    assert st["phase"] == "Queued" and cond(d, "Admitted")["status"] == "False"
    assert "startTime" not in st
    waiting = Observed(admission=Admission(AdmissionState.QUEUED, "cq", "Pending", "insufficient quota"))
    d, st = run(QUEUED, waiting, st)
    assert d.workloads is Workloads.DOWN and d.workload_action is None
    assert st["clusterQueue"] == "cq" and "insufficient quota" in cond(d, "Admitted")["message"]
    assert cond(d, "Ready")["status"] == "False"
    admitted = Observed(admission=Admission(AdmissionState.ADMITTED, "cq", "Admitted"))
    d, st = run(QUEUED, admitted, st)
    assert d.workloads is Workloads.UP and st["phase"] == "Starting" and cond(d, "Admitted")["status"] == "True"
    assert st["startTime"] == "2026-01-01T12:00:00Z"


def test_without_kueue_a_queued_job_says_so_and_creates_nothing() -> None:
    missing = Observed(admission=Admission(AdmissionState.MISSING, reason=KUEUE_NOT_INSTALLED, message="install"))
    d, st = run(QUEUED, missing)
    assert d.workloads is Workloads.DOWN and d.workload_action is None
    assert cond(d, "Admitted")["reason"] == KUEUE_NOT_INSTALLED and st["phase"] == "Queued"


def test_eviction_checkpoints_scales_down_then_releases_without_a_restart() -> None:
    status = running_status(1, restarts=1)
    running = (PodPlacement(name="demo-trainer-0", component="trainer", phase="Running", created=NOW),)
    evicted = dataclasses.replace(observed_up(1), placements=running,
                                  admission=Admission(AdmissionState.EVICTED, "cq", "Preempted", "x"))
    d, st = run(QUEUED, evicted, status)
    assert d.workloads is Workloads.NONE and st["checkpointRequest"]["reason"] == "Evicted"
    st["progress"] = {"state": "Checkpointed", "checkpointAck": st["checkpointRequest"]["id"],
                      "lastCheckpoint": "/output/checkpoints/step-8"}
    d, st = run(QUEUED, evicted, st, now=NOW + dt.timedelta(seconds=5))
    assert d.workloads is Workloads.DOWN and d.workload_action is None  # the pods are still there
    gone = dataclasses.replace(evicted, trainer_pods=(), placements=())
    d, st = run(QUEUED, gone, st, now=NOW + dt.timedelta(seconds=20))
    assert d.workload_action == "release" and st["phase"] == "Queued"
    admitted = cond(d, "Admitted")
    assert admitted["reason"] == "Preempted" and "step-8" in admitted["message"]
    assert st["restarts"] == 1 and "Failed" not in {c["type"] for c in st["conditions"]}
    # Waiting again: the reason it waits stays Preempted.
    queued = Observed(admission=Admission(AdmissionState.QUEUED, "cq", "Pending", "no quota"))
    d, st = run(QUEUED, queued, st, now=NOW + dt.timedelta(seconds=30))
    assert cond(d, "Admitted")["reason"] == "Preempted" and d.workload_action is None
