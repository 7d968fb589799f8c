"""Why a job's pods do not run, from what the cluster says (pure): the Schedulable condition.

Sources, in the order they are reported:
- an object the spec names that does not exist (a PersistentVolumeClaim, the PriorityClass), looked up by the
  reconciler while pods are missing or pending;
- a workload controller that cannot create its pods (Deployment condition ReplicaFailure, the StatefulSet's
  FailedCreate events): admission refused them (a missing PriorityClass, a quota, Pod Security);
- the scheduler's verdict on a pending pod (condition PodScheduled=False, reason Unschedulable, e.g. more GPUs
  than any node has);
- a pending pod no scheduler has looked at within a grace period (scheduling.schedulerName names none);
- a scheduled pod whose containers cannot be configured (CreateContainerConfigError: e.g. the Secret of
  target.hfTokenSecretRef does not exist).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from dspark_operator.constants import COMPONENT_INFERENCE, COMPONENT_REGENERATE, COMPONENT_TRAINER

DEFAULT_SCHEDULER = "default-scheduler"
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError", "InvalidImageName"})


@dataclasses.dataclass(frozen=True)
class PodPlacement:
    """What decides whether one pod of the job can start."""

    name: str
    component: str
    phase: str
    created: dt.datetime | None
    scheduler_name: str = DEFAULT_SCHEDULER
    node_name: str | None = None
    scheduled: str | None = None  # the PodScheduled condition's status (True/False), None when absent
    scheduled_reason: str = ""
    scheduled_message: str = ""
    waiting_reason: str = ""  # of a container that waits
    waiting_message: str = ""
    deleting: bool = False


@dataclasses.dataclass(frozen=True)
class MissingObject:
    """An object the spec names that does not exist."""

    field: str  # e.g. spec.trainer.output.claimName
    kind: str  # PersistentVolumeClaim, PriorityClass
    name: str


@dataclasses.dataclass(frozen=True)
class CreateFailure:
    """A workload controller could not create a pod (its condition or event message)."""

    workload: str  # Kind/name
    message: str


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The Schedulable condition: None status means "nothing to say yet" (no pods wanted)."""

    schedulable: bool
    reason: str
    message: str


def _component_field(component: str, problem: str, gpu_resource: str) -> str:
    if gpu_resource in problem and "Insufficient" in problem:
        return {
            COMPONENT_TRAINER: "spec.trainer.gpusPerNode",
            COMPONENT_INFERENCE: "spec.inference.gpus",
        }.get(component, "spec.scheduling")
    if "node affinity/selector" in problem:
        return "spec.scheduling.nodeSelector"
    if "untolerated taint" in problem or "had taint" in problem:
        return "spec.scheduling.tolerations"
    return {
        COMPONENT_TRAINER: "spec.trainer",
        COMPONENT_INFERENCE: "spec.inference",
        COMPONENT_REGENERATE: "spec.dataset.regenerate",
    }.get(component, "spec.scheduling")


def verdict(
    pods: Sequence[PodPlacement],
    missing: Sequence[MissingObject],
    failures: Sequence[CreateFailure],
    *,
    now: dt.datetime,
    grace_seconds: float,
    gpu_resource: str = "nvidia.com/gpu",
    secret_field: tuple[str, str] | None = None,  # (spec field, Secret name) of target.hfTokenSecretRef
) -> Verdict:
    """The Schedulable condition of a job from its pods, the objects it misses and failed pod creations."""
    if missing:
        obj = missing[0]
        return Verdict(
            False,
            f"{obj.kind}NotFound",
            f"{obj.field}: {obj.kind} {obj.name} does not exist; create it or change {obj.field}",
        )
    if failures:
        return Verdict(False, "FailedCreate", f"{failures[0].workload} cannot create its pods: {failures[0].message}")
    live = [p for p in pods if not p.deleting and p.phase == "Pending"]
    for p in live:
        if p.scheduled == "False" and p.scheduled_reason in ("Unschedulable", "SchedulerError"):
            field = _component_field(p.component, p.scheduled_message, gpu_resource)
            return Verdict(False, "Unschedulable", f"{field}: pod {p.name} cannot be scheduled: {p.scheduled_message}")
    for p in live:
        if p.scheduled is None and not p.node_name and p.created is not None:
            waited = (now - p.created).total_seconds()
            if waited >= grace_seconds:
                return Verdict(
                    False,
                    "SchedulerNotResponding",
                    f"spec.scheduling.schedulerName: no scheduler named {p.scheduler_name!r} looked at pod {p.name} "
                    f"in {int(waited)}s; name a scheduler that runs in the cluster (or leave it unset)",
                )
    for p in live:
        if p.waiting_reason not in CONFIG_ERRORS:
            continue
        message = p.waiting_message
        if secret_field is not None and secret_field[1] in message and "secret" in message.lower():
            field = secret_field[0]
            text = f"{field}: pod {p.name} cannot start: {message}; create the Secret or change {field}"
            return Verdict(False, "SecretNotFound", text)
        return Verdict(False, p.waiting_reason, f"pod {p.name} cannot start: {message}")
    if any(p.scheduled == "False" or (p.scheduled is None and not p.node_name) for p in live):
        return Verdict(True, "Schedulable", "pods are being scheduled")
    return Verdict(True, "Schedulable", "every pod of the job is placed")


def placement_from_pod(pod: Mapping[str, Any], component: str) -> PodPlacement:
    """PodPlacement from a Pod object."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    waiting_reason, waiting_message = "", ""
    for cs in list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            waiting_reason, waiting_message = str(waiting["reason"]), str(waiting.get("message") or "")
            break
    created = None
    if meta.get("creationTimestamp"):
        try:
            created = dt.datetime.fromisoformat(str(meta["creationTimestamp"]).replace("Z", "+00:00"))
        except ValueError:
            created = None
    return PodPlacement(
        name=str(meta.get("name", "")),
        component=component,
        phase=str(status.get("phase") or "Pending"),
        created=created,
        scheduler_name=str(spec.get("schedulerName") or DEFAULT_SCHEDULER),
        node_name=spec.get("nodeName") or None,
        scheduled=str(scheduled.get("status")) if scheduled else None,
        scheduled_reason=str((scheduled or {}).get("reason") or ""),
        scheduled_message=str((scheduled or {}).get("message") or ""),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        deleting=bool(meta.get("deletionTimestamp")),
    )
