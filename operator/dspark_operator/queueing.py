"""Gang admission through Kueue, as an external framework (pure: manifests and status in, manifests out).

A job with `spec.scheduling.queueName` is one Kueue Workload (kueue.x-k8s.io/v1beta2) owned by the job: one pod
set per role (the Mooncake master, the capture servers, the trainer gang) with the pod templates the operator
renders. Kueue reserves quota for all of them at once or for none; the operator creates the job's Deployments and
StatefulSet only once the Workload is admitted. When Kueue evicts the Workload (preemption by a higher-priority
job, a stopped queue), the operator asks the trainer for a checkpoint, scales the children down and, once no pod
of the job runs, gives the quota back (QuotaReserved=False, the admission cleared, Requeued=True), which is what
Kueue's own job integrations do; Kueue then queues the Workload again. When the job ends, the Workload is marked
Finished and its quota is released.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from dspark_operator.constants import (
    API_VERSION,
    COMPONENT_INFERENCE,
    COMPONENT_MOONCAKE,
    COMPONENT_TRAINER,
    KIND,
    LABEL_COMPONENT,
    LABEL_KUEUE_QUEUE,
)

KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta2"
WORKLOAD_KIND = "Workload"
# Conditions of a Kueue Workload (the kueue.x-k8s.io/v1beta2 API).
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
REQUEUED = "Requeued"
FINISHED = "Finished"
# Eviction reasons after which Kueue queues the Workload again by itself (Requeued=True).
KUEUE_NOT_INSTALLED = "KueueNotInstalled"  # reason: the cluster serves no Kueue API
REQUEUE_REASONS = frozenset({"Preempted", "NodeFailures"})
# The Workload's pod sets, in the order the operator starts them (names are DNS labels).
POD_SETS = ((COMPONENT_MOONCAKE, "Deployment"), (COMPONENT_INFERENCE, "Deployment"), (COMPONENT_TRAINER, "StatefulSet"))


def workload_name(job_name: str) -> str:
    """The name of a job's Kueue Workload."""
    return f"{job_name}-gang"


class AdmissionState(enum.StrEnum):
    """Where a job's Workload stands with Kueue."""

    MISSING = "Missing"  # not created yet
    QUEUED = "Queued"  # waiting for quota
    ADMITTED = "Admitted"  # quota reserved and every admission check passed: the job may run
    EVICTED = "Evicted"  # still holding quota, but Kueue wants it back: stop the job, then release it
    FINISHED = "Finished"  # the job ended; its quota is released


@dataclasses.dataclass(frozen=True)
class Admission:
    """What the operator needs to know of a job's Workload."""

    state: AdmissionState
    cluster_queue: str | None = None  # the ClusterQueue that reserved the quota (Admitted, Evicted)
    reason: str = ""  # Kueue's reason (e.g. Pending, Preempted)
    message: str = ""  # Kueue's message (why it waits, who preempted it)


def _conditions(workload: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in (workload.get("status") or {}).get("conditions") or []}


def _is_true(conds: Mapping[str, Mapping[str, Any]], ctype: str) -> bool:
    return (conds.get(ctype) or {}).get("status") == "True"


def admission_of(workload: Mapping[str, Any] | None) -> Admission:
    """The job's admission from its Workload (pure)."""
    if workload is None:
        return Admission(AdmissionState.MISSING)
    conds = _conditions(workload)
    admission = (workload.get("status") or {}).get("admission") or {}
    queue = admission.get("clusterQueue")
    if _is_true(conds, FINISHED):
        return Admission(AdmissionState.FINISHED, queue, str(conds[FINISHED].get("reason") or ""))
    reserved = _is_true(conds, QUOTA_RESERVED) and bool(admission)
    if reserved and _is_true(conds, EVICTED):
        ev = conds[EVICTED]
        return Admission(AdmissionState.EVICTED, queue, str(ev.get("reason") or ""), str(ev.get("message") or ""))
    if reserved and _is_true(conds, ADMITTED):
        return Admission(AdmissionState.ADMITTED, queue, "Admitted", str(conds[ADMITTED].get("message") or ""))
    waiting = conds.get(QUOTA_RESERVED) or {}
    return Admission(AdmissionState.QUEUED, None, str(waiting.get("reason") or "Pending"),
                     str(waiting.get("message") or "waiting for Kueue to reserve quota"))


def _pod_template(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or StatefulSet, without the labels Kueue's own integrations react to."""
    template = dict((manifest.get("spec") or {}).get("template") or {})
    meta = dict(template.get("metadata") or {})
    meta["labels"] = {k: v for k, v in (meta.get("labels") or {}).items() if k != LABEL_KUEUE_QUEUE}
    template["metadata"] = meta
    return template


def pod_sets(manifests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One Kueue pod set per role, from the children as built (their pod templates and replicas)."""
    out = []
    for component, kind in POD_SETS:
        manifest = next(
            (m for m in manifests if m.get("kind") == kind
             and ((m.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT) == component),
            None,
        )
        count = int(((manifest or {}).get("spec") or {}).get("replicas") or 0)
        if manifest is None or count <= 0:
            continue
        out.append({"name": component, "count": count, "template": _pod_template(manifest)})
    return out


def build_workload(
    *,
    name: str,
    namespace: str,
    uid: str,
    queue_name: str,
    manifests: Sequence[Mapping[str, Any]],
    labels: Mapping[str, str],
    priority: int | None,
    priority_class_name: str | None,
) -> dict[str, Any]:
    """The job's Workload: every role's pods as one gang in `queue_name`, owned by the job."""
    spec: dict[str, Any] = {"queueName": queue_name, "podSets": pod_sets(manifests), "active": True}
    if priority_class_name:
        spec["priorityClassRef"] = {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": priority_class_name}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": WORKLOAD_KIND,
        "metadata": {
            "name": workload_name(name),
            "namespace": namespace,
            "labels": {**labels, LABEL_KUEUE_QUEUE: queue_name},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid,
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }


def _fmt(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_condition(conditions: list[dict[str, Any]], ctype: str, status: bool, reason: str, message: str,
                   now: dt.datetime, generation: int) -> None:
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == ctype), None)
    since = old["lastTransitionTime"] if old is not None and old.get("status") == value else _fmt(now)
    new = {"type": ctype, "status": value, "reason": reason, "message": message[:32768],
           "lastTransitionTime": since, "observedGeneration": generation}
    conditions[:] = [c for c in conditions if c.get("type") != ctype] + [new]


def released(workload: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The Workload after its job stopped for an eviction: quota given back, admission cleared, and (for a
    preemption) Requeued=True, so Kueue queues it again. What Kueue's own job integrations write."""
    out = {**workload, "status": dict(workload.get("status") or {})}
    status = out["status"]
    conds = [dict(c) for c in status.get("conditions") or []]
    generation = int((workload.get("metadata") or {}).get("generation") or 0)
    evicted = next((c for c in conds if c.get("type") == EVICTED), {})
    reason, message = str(evicted.get("reason") or "Evicted"), str(evicted.get("message") or "evicted")
    _set_condition(conds, REQUEUED, reason in REQUEUE_REASONS, reason, message, now, generation)
    _set_condition(conds, QUOTA_RESERVED, False, "Pending", message, now, generation)
    _set_condition(conds, ADMITTED, False, "NoReservation", "The workload has no reservation", now, generation)
    status["conditions"] = conds
    status.pop("admission", None)
    return out


def finished(workload: Mapping[str, Any], *, succeeded: bool, message: str, now: dt.datetime) -> dict[str, Any]:
    """The Workload of a job that ended (Finished=True: Kueue releases its quota)."""
    out = {**workload, "status": dict(workload.get("status") or {})}
    conds = [dict(c) for c in out["status"].get("conditions") or []]
    generation = int((workload.get("metadata") or {}).get("generation") or 0)
    _set_condition(conds, FINISHED, True, "Succeeded" if succeeded else "Failed", message, now, generation)
    out["status"]["conditions"] = conds
    return out
