"""Pure status computation: from (job, observed children, now) to the new status and the actions to take.

Nothing here does I/O, so every rule of the job's life (phases, conditions, gang restarts, suspend,
deadline, TTL, completion) is unit-testable without a cluster. :mod:`dspark_operator.reconcile`
observes the cluster, calls :func:`decide` and carries out the :class:`Decision`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from dspark_trainer.config import ConfigError
from dspark_trainer.config.progress import TrainerState
from dspark_trainer.target_resolution import describe_target, known_target_layers, resolve_layer_ids

from dspark_operator.api.job import JobView
from dspark_operator.api.paths import dataset_path_for_training, draft_output_path
from dspark_operator.api.spec import RunPolicySpec
from dspark_operator.api.status import (
    TERMINAL_PHASES,
    CheckpointRequest,
    Condition,
    ConditionStatus,
    ConditionType,
    DSparkTrainingJobStatus,
    GangMember,
    GangStatus,
    Phase,
)
from dspark_operator.builders.regenerate_job import describe_summary, job_conditions, regenerate_job_name
from dspark_operator.queueing import KUEUE_NOT_INSTALLED, Admission, AdmissionState
from dspark_operator.scheduling import PodPlacement, Verdict

SUSPEND_REASON = "Suspend"
EVICTION_REASON = "Evicted"  # a checkpoint request before Kueue's eviction stops the job
# Reasons of the Regenerating condition (besides the Job's own failure reason).
REGEN_WAITING = "WaitingForInference"
REGEN_RUNNING = "JobRunning"
REGEN_COMPLETED = "Completed"
REGEN_FAILED = "RegenerationFailed"  # reason of the Failed condition when the regeneration Job fails
# Seconds between checks while something is in motion (events usually wake the worker sooner).
ACTIVE_REQUEUE = 10.0


# ------------------------------------------------------------------------------------------
# Observed state


@dataclasses.dataclass(frozen=True)
class PodInfo:
    """What the reconciler needs to know about one trainer pod."""

    name: str
    uid: str
    phase: str
    ready: bool
    restart_count: int
    deleting: bool
    revision: str | None = None
    reason: str | None = None

    @property
    def running(self) -> bool:
        """Running and not being deleted."""
        return self.phase == "Running" and not self.deleting


@dataclasses.dataclass(frozen=True)
class WorkloadInfo:
    """A Deployment or StatefulSet as observed."""

    name: str
    replicas: int
    ready_replicas: int
    update_revision: str | None = None


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """The data-regeneration Job (batch/v1) as observed."""

    name: str
    uid: str
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False  # condition Complete=True
    failed_reason: str | None = None  # condition Failed=True: its reason (BackoffLimitExceeded, DeadlineExceeded, ...)
    failed_message: str = ""
    deleting: bool = False
    summary: Mapping[str, Any] | None = None  # counts from the succeeded pod's termination message
    pod_failure: str = ""  # what the latest failed pod said (exit code, termination message), once the Job failed

    @property
    def finished(self) -> bool:
        """Complete or Failed (the Job controller will not start another pod)."""
        return self.complete or self.failed_reason is not None


@dataclasses.dataclass(frozen=True)
class Observed:
    """The job's children as observed before this reconcile."""

    children: frozenset[tuple[str, str]] = frozenset()  # (kind, name) of the children that exist
    mooncake: WorkloadInfo | None = None
    inference: WorkloadInfo | None = None
    trainer: WorkloadInfo | None = None
    trainer_pods: tuple[PodInfo, ...] = ()
    regenerate: JobInfo | None = None
    schedulable: Verdict | None = None  # None: not looked at (e.g. the first pass, nothing exists yet)
    placements: tuple[PodPlacement, ...] = ()  # every pod of the job, for the Schedulable condition
    admission: Admission | None = None  # the job's Kueue Workload (spec.scheduling.queueName); None: not looked at


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """PodInfo from a Pod object."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    statuses = list(status.get("containerStatuses") or []) + list(status.get("initContainerStatuses") or [])
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    reason = status.get("reason")
    for cs in statuses:
        state = cs.get("state") or {}
        last = cs.get("lastState") or {}
        for candidate in (state.get("waiting"), state.get("terminated"), last.get("terminated")):
            if candidate and candidate.get("reason"):
                reason = reason or candidate["reason"]
    labels = meta.get("labels") or {}
    return PodInfo(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        restart_count=restarts,
        deleting=bool(meta.get("deletionTimestamp")),
        revision=labels.get("controller-revision-hash"),
        reason=reason,
    )


def workload_info(obj: Mapping[str, Any]) -> WorkloadInfo:
    """WorkloadInfo from a Deployment or StatefulSet object."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return WorkloadInfo(
        name=str((obj.get("metadata") or {}).get("name", "")),
        replicas=int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
        ready_replicas=int(status.get("readyReplicas") or 0),
        update_revision=status.get("updateRevision"),
    )


def job_info(obj: Mapping[str, Any], summary: Mapping[str, Any] | None = None, pod_failure: str = "") -> JobInfo:
    """JobInfo from a batch/v1 Job object."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conds = job_conditions(obj)
    failed = conds.get("Failed")
    return JobInfo(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        complete="Complete" in conds,
        failed_reason=str(failed.get("reason") or "Failed") if failed is not None else None,
        failed_message=str(failed.get("message") or "") if failed is not None else "",
        deleting=bool(meta.get("deletionTimestamp")),
        summary=summary,
        pod_failure=pod_failure,
    )


# ------------------------------------------------------------------------------------------
# Decision


class Workloads(enum.Enum):
    """What to do with the children."""

    UP = "up"  # apply every child with its replicas from the spec
    DOWN = "down"  # scale existing workloads to zero; create nothing
    NONE = "none"  # touch nothing


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the job."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclasses.dataclass
class Decision:
    """The new status and the actions that lead there."""

    status: DSparkTrainingJobStatus
    workloads: Workloads
    delete_pods: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, uid)
    delete_job: bool = False
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None
    gang_restart: bool = False
    result: str = "ok"
    trainer_up: bool = True  # False: the trainer StatefulSet stays at 0 replicas (data regeneration first)
    regenerate_job: bool = False  # create the regeneration Job if it is missing
    workload_action: str | None = None  # Kueue Workload: "create", "release" (evicted, stopped) or "finish"


def fmt_time(t: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, second precision (as Kubernetes writes times)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 time; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class _Builder:
    """Accumulates status changes and the events they cause."""

    def __init__(self, job: JobView, now: dt.datetime) -> None:
        self.job = job
        self.now = now
        self.status = job.status.model_copy(deep=True)
        self.events: list[Event] = []
        self.requeue: list[float] = []
        self.delete_pods: list[tuple[str, str]] = []

    def condition(self, ctype: ConditionType, value: bool | None, reason: str, message: str = "") -> None:
        """Set a condition (None: Unknown); a change of status or reason is also an event."""
        status = ConditionStatus.UNKNOWN if value is None else ConditionStatus.TRUE if value else ConditionStatus.FALSE
        old = self.status.condition(ctype.value)
        if old is not None and old.status == status.value and old.reason == reason and old.message == message:
            if old.observed_generation != self.job.generation:
                old.observed_generation = self.job.generation
            return
        changed_status = old is None or old.status != status.value
        new = Condition(
            type=ctype.value,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=fmt_time(self.now) if changed_status or old is None else old.last_transition_time,
            observed_generation=self.job.generation,
        )
        self.status.conditions = [c for c in self.status.conditions if c.type != ctype.value] + [new]
        self.status.conditions.sort(key=lambda c: _CONDITION_ORDER.get(c.type, 99))
        # A condition that starts out False is no transition, unless False is the news (e.g. Schedulable); some
        # start out True without news either.
        quiet_start = old is None and (
            (value is not True and ctype not in _WARN_WHEN_FALSE) or (value is True and ctype in _QUIET_WHEN_TRUE)
        )
        if ctype in _NO_EVENTS:
            return
        if not quiet_start and (changed_status or (old is not None and old.reason != reason)):
            warning = (value is True and ctype in _WARN_WHEN_TRUE) or (value is False and ctype in _WARN_WHEN_FALSE)
            text = f"{ctype.value}={status.value}: {message}" if message else f"{ctype.value}={status.value}"
            self.events.append(Event("Warning" if warning else "Normal", reason, text))

    def drop_condition(self, ctype: ConditionType) -> None:
        self.status.conditions = [c for c in self.status.conditions if c.type != ctype.value]

    def phase(self, phase: Phase, message: str = "") -> None:
        if self.status.phase != phase.value:
            text = f"phase {self.status.phase or 'None'} -> {phase.value}" + (f": {message}" if message else "")
            kind = "Warning" if phase == Phase.FAILED else "Normal"
            self.events.append(Event(kind, f"Phase{phase.value}", text))
            self.status.phase = phase

    def finish(self, workloads: Workloads, **kwargs: Any) -> Decision:
        self.status.observed_generation = self.job.generation
        ready, reason, message = readiness(self.status)
        self.condition(ConditionType.READY, ready, reason, message)
        requeue = min(self.requeue) if self.requeue else None
        kwargs.setdefault("delete_pods", list(self.delete_pods))
        return Decision(status=self.status, workloads=workloads, events=self.events, requeue_after=requeue, **kwargs)


_CONDITION_ORDER = {c.value: i for i, c in enumerate(ConditionType)}
# Conditions that must be True for Ready, with the Ready reason while one is not.
_READY_NEEDS = (
    (ConditionType.TRANSPORT_READY, "TransportNotReady"),
    (ConditionType.INFERENCE_READY, "InferenceNotReady"),
    (ConditionType.TRAINER_READY, "TrainerNotReady"),
    (ConditionType.RUNNING, "NotRunning"),
)
# Conditions that make a job not Ready while True / False, with the Ready reason.
_READY_BLOCKERS = ((ConditionType.RESTARTING, True, "Restarting"), (ConditionType.SPEC_REJECTED, True, "SpecRejected"),
                   (ConditionType.SCHEDULABLE, False, "Unschedulable"))


def readiness(status: DSparkTrainingJobStatus) -> tuple[bool, str, str]:
    """The Ready condition from the others (pure): True when the job is Running with transport, inference and
    the trainer gang up and nothing restarting, unschedulable or rejected; otherwise the first reason why not."""
    phase = status.phase or Phase.PENDING.value
    if phase in TERMINAL_PHASES or phase in (Phase.SUSPENDED.value, Phase.REGENERATING.value, Phase.QUEUED.value):
        return False, phase, f"the job is {phase}"
    for ctype, bad, reason in _READY_BLOCKERS:
        cond = status.condition(ctype.value)
        if cond is not None and cond.status == (ConditionStatus.TRUE if bad else ConditionStatus.FALSE).value:
            return False, reason, f"{ctype.value}={cond.status}: {cond.message}"
    for ctype, reason in _READY_NEEDS:
        cond = status.condition(ctype.value)
        if cond is None or cond.status != ConditionStatus.TRUE.value:
            return False, reason, f"{ctype.value} is not True" + (f": {cond.message}" if cond and cond.message else "")
    return True, "AllReady", "transport, inference and the trainer gang are ready; training runs"
_WARN_WHEN_TRUE = frozenset({ConditionType.FAILED, ConditionType.RESTARTING, ConditionType.SPEC_REJECTED})
_WARN_WHEN_FALSE = frozenset({ConditionType.SCHEDULABLE, ConditionType.OUTPUT_PERSISTENT})
_QUIET_WHEN_TRUE = frozenset(
    {ConditionType.SCHEDULABLE, ConditionType.OUTPUT_PERSISTENT, ConditionType.TARGET_LAYERS_CHECKED}
)
_NO_EVENTS = frozenset({ConditionType.READY})  # a summary of the others, whose changes are the events


def run_policy_of(job: JobView) -> RunPolicySpec:
    """The run policy, also for jobs whose spec is otherwise invalid (best effort)."""
    if job.spec is not None:
        return job.spec.run_policy
    return RunPolicySpec()


# ------------------------------------------------------------------------------------------
# The rules


def decide(job: JobView, observed: Observed, now: dt.datetime, *, run_policy: RunPolicySpec | None = None) -> Decision:
    """Compute the job's next status and the actions to get there."""
    b = _Builder(job, now)
    st = b.status
    policy = run_policy or run_policy_of(job)

    # Terminal phases are sticky: keep children scaled down, honour the TTL, never recreate anything.
    if st.phase in TERMINAL_PHASES:
        return _terminal(b, policy)

    if job.invalid is not None:
        b.condition(ConditionType.FAILED, True, "InvalidSpec", str(job.invalid))
        return _fail(b, policy, "InvalidSpec", str(job.invalid), result="invalid")

    spec = job.spec
    assert spec is not None
    progress = st.progress
    _spec_acceptance(b)

    if progress is not None and progress.state == TrainerState.COMPLETED.value:
        st.draft_path = progress.draft_path or draft_output_path(spec)
        st.draft_uri = progress.draft_uri
        st.completion_time = st.completion_time or fmt_time(now)
        st.checkpoint_request = None
        b.condition(ConditionType.SUCCEEDED, True, "TrainingCompleted", f"draft written to {st.draft_path}")
        _mark_stopped(b, "TrainingCompleted")
        published = f", published to {st.draft_uri}" if st.draft_uri else ""
        b.phase(Phase.SUCCEEDED, f"draft at {st.draft_path}{published}")
        _ttl(b, policy)
        return b.finish(Workloads.DOWN)

    if progress is not None and progress.state == TrainerState.FAILED.value:
        msg = progress.message or "the trainer reported a failure it cannot recover from"
        b.condition(ConditionType.FAILED, True, "TrainerFailed", msg)
        return _fail(b, policy, "TrainerFailed", msg)

    start = parse_time(st.start_time)
    deadline = policy.active_deadline_seconds
    if deadline is not None and start is not None and st.phase not in (Phase.SUSPENDED.value, Phase.QUEUED.value):
        left = (start - now).total_seconds() + deadline
        if left <= 0:
            msg = f"the job ran longer than activeDeadlineSeconds={deadline}"
            b.condition(ConditionType.FAILED, True, "DeadlineExceeded", msg)
            return _fail(b, policy, "DeadlineExceeded", msg)
        b.requeue.append(left)

    if policy.suspend:
        return _suspend(b, policy, observed)
    if st.phase == Phase.SUSPENDED.value:
        b.condition(ConditionType.SUSPENDED, False, "Resumed", "runPolicy.suspend is false; scaling back up")
        st.start_time = fmt_time(now)  # as for Jobs: the deadline counts from the resume
        st.gang = GangStatus()
        b.phase(Phase.STARTING, "resumed")
        if deadline is not None:
            b.requeue.append(float(deadline))
    if st.checkpoint_request is not None and st.checkpoint_request.reason == SUSPEND_REASON:
        st.checkpoint_request = None  # suspend was withdrawn before it completed
        if st.condition(ConditionType.SUSPENDED.value) is not None:
            b.condition(ConditionType.SUSPENDED, False, "SuspendCancelled", "runPolicy.suspend is false again")

    if spec.scheduling.queue_name:
        gated = _admission(b, policy, observed, spec.scheduling.queue_name)
        if gated is not None:
            return gated
    return _running(b, policy, observed)


_TRANSIENT_ADMISSION_REASONS = frozenset(
    {"Queued", "Stopping", "CheckpointRequested", "Admitted", KUEUE_NOT_INSTALLED}
)


def _job_pods_active(observed: Observed) -> bool:
    """Whether some pod of the job still runs or may start (the regeneration Job's included)."""
    return any(p.phase not in ("Succeeded", "Failed") for p in observed.placements)


def _admission(b: _Builder, policy: RunPolicySpec, observed: Observed, queue: str) -> Decision | None:
    """Kueue gang admission: nothing of the job runs until its Workload is admitted; an evicted job checkpoints,
    stops and gives its quota back (no failure, no restart counted), then waits in the queue again. None: admitted,
    go on running."""
    st = b.status
    adm = observed.admission or Admission(AdmissionState.MISSING)
    if adm.state is AdmissionState.ADMITTED:
        st.cluster_queue = adm.cluster_queue
        b.condition(ConditionType.ADMITTED, True, "Admitted", f"admitted by ClusterQueue {adm.cluster_queue}")
        if st.checkpoint_request is not None and st.checkpoint_request.reason == EVICTION_REASON:
            st.checkpoint_request = None
        if st.phase == Phase.QUEUED.value:
            st.start_time = fmt_time(b.now)  # the deadline counts from the admission
            st.gang = GangStatus()
            b.phase(Phase.STARTING, f"admitted by ClusterQueue {adm.cluster_queue}")
        return None
    if adm.state is AdmissionState.EVICTED:
        stopped = _checkpoint_before_stop(b, policy, observed, EVICTION_REASON, ConditionType.ADMITTED)
        if stopped is None:
            return b.finish(Workloads.NONE)
        _, how = stopped
        why = f"evicted by Kueue ({adm.reason}: {adm.message})"
        st.gang = GangStatus()
        _mark_stopped(b, "Evicted")
        if _job_pods_active(observed):
            b.condition(ConditionType.ADMITTED, False, "Stopping", f"{why}; {how}; waiting for the pods to stop")
            b.requeue.append(ACTIVE_REQUEUE)
            return b.finish(Workloads.DOWN)
        st.checkpoint_request = None
        b.condition(ConditionType.ADMITTED, False, adm.reason or "Evicted", f"{why}; {how}; queued again")
        b.phase(Phase.QUEUED, f"{why}; queued again in LocalQueue {queue}")
        return b.finish(Workloads.DOWN, workload_action="release")
    # Missing or queued: no pod of the job may run (Kueue may have taken the quota back by itself).
    if adm.cluster_queue:
        st.cluster_queue = adm.cluster_queue
    where = f"LocalQueue {queue}" + (f" (ClusterQueue {adm.cluster_queue})" if adm.cluster_queue else "")
    waiting = adm.message if adm.state is AdmissionState.QUEUED else "creating the Kueue Workload"
    old = st.condition(ConditionType.ADMITTED.value)
    if adm.reason == KUEUE_NOT_INSTALLED:
        b.condition(ConditionType.ADMITTED, False, KUEUE_NOT_INSTALLED, adm.message)
    elif old is None or old.status != ConditionStatus.FALSE or old.reason in _TRANSIENT_ADMISSION_REASONS:
        b.condition(ConditionType.ADMITTED, False, "Queued", f"waiting in {where}: {waiting}")
    # else: the reason the job waits again (e.g. Preempted) stays until Kueue admits it
    if st.phase != Phase.QUEUED.value:
        _mark_stopped(b, "Queued")
        st.gang = GangStatus()
    b.phase(Phase.QUEUED, f"waiting for Kueue to admit the whole gang in {where}")
    if _job_pods_active(observed):
        b.requeue.append(ACTIVE_REQUEUE)
    if adm.reason == KUEUE_NOT_INSTALLED:
        b.requeue.append(60.0)  # Kueue may be installed later
    action = "create" if adm.state is AdmissionState.MISSING and adm.reason != KUEUE_NOT_INSTALLED else None
    return b.finish(Workloads.DOWN, workload_action=action)


def _spec_acceptance(b: _Builder) -> None:
    """SpecRejected: True while the latest generation is refused and the job works from an older one."""
    job = b.job
    if job.rejected is not None:
        b.condition(
            ConditionType.SPEC_REJECTED,
            True,
            "InvalidSpec",
            f"generation {job.generation} is not used: {job.rejected}. The job keeps running on generation "
            f"{job.spec_generation}; fix the field (or revert the edit)",
        )
    elif b.status.is_true(ConditionType.SPEC_REJECTED.value):
        b.condition(ConditionType.SPEC_REJECTED, False, "SpecAccepted", f"generation {job.generation} is in use")


def _target_layers(b: _Builder) -> None:
    """TargetLayersChecked: True for a target of known depth (the layers were checked with the spec), Unknown
    otherwise (the trainer checks them when it loads the target's config)."""
    spec = b.job.spec
    assert spec is not None
    layers = known_target_layers(spec.target)
    if layers is not None:
        try:
            ids = resolve_layer_ids(spec.draft, layers)
        except ConfigError as err:
            b.condition(ConditionType.TARGET_LAYERS_CHECKED, False, "LayersDoNotFit", str(err))
            return
        b.condition(
            ConditionType.TARGET_LAYERS_CHECKED,
            True,
            "KnownTarget",
            f"target layers {ids} fit {describe_target(spec.target)} ({layers} layers)",
        )
    else:
        what = (
            f"draft.targetLayerIds {spec.draft.target_layer_ids}"
            if spec.draft.target_layer_ids is not None
            else f"draft.numTargetLayersCaptured={spec.draft.num_target_layers_captured}"
        )
        b.condition(
            ConditionType.TARGET_LAYERS_CHECKED,
            None,
            "TargetConfigUnknown",
            f"the operator does not know the depth of {spec.target.model}: the trainer checks {what} against the "
            "target's config when it starts, and a mismatch fails the job (TrainerFailed, no restarts)",
        )


def _output_persistence(b: _Builder) -> None:
    """OutputPersistent: whether checkpoints and the draft outlive the trainer pods."""
    spec = b.job.spec
    assert spec is not None
    out = spec.trainer.output
    if out.claim_name:
        b.condition(
            ConditionType.OUTPUT_PERSISTENT,
            True,
            "ClaimMounted",
            f"checkpoints and the draft are written to PersistentVolumeClaim {out.claim_name} at {out.mount_path}",
        )
    else:
        b.condition(
            ConditionType.OUTPUT_PERSISTENT,
            False,
            "EmptyDir",
            "spec.trainer.output.ephemeral is true: checkpoints and the draft go to an emptyDir and are lost with "
            "the trainer pods (a gang restart starts from scratch); set spec.trainer.output.claimName to a "
            "PersistentVolumeClaim instead",
        )


def _schedulability(b: _Builder, observed: Observed) -> None:
    verdict = observed.schedulable
    if verdict is not None:
        b.condition(ConditionType.SCHEDULABLE, verdict.schedulable, verdict.reason, verdict.message)


def _terminal(b: _Builder, policy: RunPolicySpec) -> Decision:
    if b.status.completion_time is None:
        b.status.completion_time = fmt_time(b.now)
    delete = _ttl(b, policy)
    return b.finish(Workloads.DOWN, delete_job=delete)


def _ttl(b: _Builder, policy: RunPolicySpec) -> bool:
    ttl = policy.ttl_seconds_after_finished
    done = parse_time(b.status.completion_time) or b.now
    if ttl is None:
        return False
    left = (done - b.now).total_seconds() + ttl
    if left <= 0:
        b.events.append(Event("Normal", "TTLExpired", f"deleting the job {ttl}s after it finished"))
        return True
    b.requeue.append(left)
    return False


def _mark_stopped(b: _Builder, reason: str) -> None:
    for ctype in (
        ConditionType.RUNNING,
        ConditionType.TRAINER_READY,
        ConditionType.INFERENCE_READY,
        ConditionType.TRANSPORT_READY,
    ):
        if b.status.condition(ctype.value) is not None:
            b.condition(ctype, False, reason, "children scaled down")
    if b.status.is_true(ConditionType.RESTARTING.value):
        b.condition(ConditionType.RESTARTING, False, reason)
    if b.status.is_true(ConditionType.REGENERATING.value):
        b.condition(ConditionType.REGENERATING, False, reason, "the regeneration Job is stopped")


def _fail(b: _Builder, policy: RunPolicySpec, reason: str, message: str, result: str = "failed") -> Decision:
    b.status.completion_time = b.status.completion_time or fmt_time(b.now)
    b.status.checkpoint_request = None
    _mark_stopped(b, reason)
    b.phase(Phase.FAILED, message)
    delete = _ttl(b, policy)
    return b.finish(Workloads.DOWN, delete_job=delete, result=result)


def _checkpoint_before_stop(
    b: _Builder, policy: RunPolicySpec, observed: Observed, request_reason: str, ctype: ConditionType
) -> tuple[str, str] | None:
    """The handshake before the job's pods are stopped (suspend, Kueue eviction): ask a running trainer for a
    checkpoint and wait for its acknowledgement, up to runPolicy.suspendTimeoutSeconds. None while waiting;
    then (reason, message) of how it ended."""
    st = b.status
    trainer_running = any(p.running for p in observed.trainer_pods)
    req = st.checkpoint_request
    if trainer_running and (req is None or req.reason != request_reason):
        req = CheckpointRequest(
            id=f"{request_reason.lower()}-{b.job.generation}-{int(b.now.timestamp())}",
            reason=request_reason,
            requested_time=fmt_time(b.now),
        )
        st.checkpoint_request = req
        b.condition(ctype, False, "CheckpointRequested", f"waiting for the trainer to checkpoint ({req.id})")
        b.requeue.append(min(ACTIVE_REQUEUE, float(policy.suspend_timeout_seconds)))
        return None
    progress = st.progress
    acked = req is not None and progress is not None and progress.checkpoint_ack == req.id
    if req is None or not (trainer_running or acked):
        return "Stopped", "no trainer pod was running; scaled down"
    asked = parse_time(req.requested_time) or b.now
    left = (asked - b.now).total_seconds() + policy.suspend_timeout_seconds
    if acked:
        where = progress.last_checkpoint if progress is not None else None
        return "Checkpointed", f"trainer checkpointed{f' to {where}' if where else ''}; scaled down"
    if left <= 0:
        return "CheckpointTimeout", f"no checkpoint within suspendTimeoutSeconds={policy.suspend_timeout_seconds}; " \
            "scaled down"
    b.requeue.append(min(ACTIVE_REQUEUE, left))
    return None


def _suspend(b: _Builder, policy: RunPolicySpec, observed: Observed) -> Decision:
    st = b.status
    if st.phase == Phase.SUSPENDED.value:
        return b.finish(Workloads.DOWN)
    stopped = _checkpoint_before_stop(b, policy, observed, SUSPEND_REASON, ConditionType.SUSPENDED)
    if stopped is None:
        return b.finish(Workloads.NONE)
    reason, message = stopped
    reason = "Suspended" if reason == "Stopped" else reason
    st.checkpoint_request = None
    st.gang = GangStatus()
    b.condition(ConditionType.SUSPENDED, True, reason, message)
    _mark_stopped(b, "Suspended")
    b.phase(Phase.SUSPENDED, message)
    return b.finish(Workloads.DOWN)


def _running(b: _Builder, policy: RunPolicySpec, observed: Observed) -> Decision:
    st = b.status
    spec = b.job.spec
    assert spec is not None
    if st.start_time is None:
        st.start_time = fmt_time(b.now)
        if policy.active_deadline_seconds is not None:
            b.requeue.append(float(policy.active_deadline_seconds))
    b.condition(ConditionType.CREATED, True, "ChildrenApplied", "all children are applied")
    _target_layers(b)
    _output_persistence(b)
    _schedulability(b, observed)

    mooncake_ready = observed.mooncake is not None and observed.mooncake.ready_replicas >= 1
    b.condition(
        ConditionType.TRANSPORT_READY,
        mooncake_ready,
        "MasterReady" if mooncake_ready else "WaitingForMaster",
        "Mooncake master is ready" if mooncake_ready else "Mooncake master is not ready yet",
    )
    want = spec.inference.replicas
    have = observed.inference.ready_replicas if observed.inference is not None else 0
    inference_ready = have >= want
    b.condition(
        ConditionType.INFERENCE_READY,
        inference_ready,
        "ReplicasReady" if inference_ready else "WaitingForReplicas",
        f"{min(have, want)}/{want} inference replicas ready",
    )

    if spec.dataset.regenerate is not None:
        regenerating = _regeneration(b, policy, observed, mooncake_ready=mooncake_ready, ready=have, want=want)
        if regenerating is not None:
            return regenerating

    decision_extra = _gang(b, policy, observed)
    if decision_extra is not None:
        return decision_extra
    gang = st.gang or GangStatus()
    nodes = spec.trainer.nodes
    trainer_ready = len(gang.members) == nodes
    running_pods = sum(1 for p in observed.trainer_pods if p.running)
    b.condition(
        ConditionType.TRAINER_READY,
        trainer_ready,
        "GangRunning" if trainer_ready else "WaitingForGang",
        f"{min(running_pods, nodes) if not trainer_ready else nodes}/{nodes} trainer pods running",
    )
    restarting = st.is_true(ConditionType.RESTARTING.value)
    if restarting and trainer_ready:
        b.condition(ConditionType.RESTARTING, False, "GangRunning", f"all {nodes} trainer pods run again")
        restarting = False
    running = trainer_ready and inference_ready and mooncake_ready
    if running:
        b.condition(ConditionType.RUNNING, True, "Training", "trainer, inference and transport are up")
        b.phase(Phase.RUNNING)
    else:
        missing = [
            name
            for name, ok in (("transport", mooncake_ready), ("inference", inference_ready), ("trainer", trainer_ready))
            if not ok
        ]
        b.condition(
            ConditionType.RUNNING,
            False,
            "Restarting" if restarting else "Starting",
            f"waiting for {', '.join(missing)}",
        )
        anything_up = mooncake_ready or have > 0 or running_pods > 0
        b.phase(Phase.STARTING if anything_up or st.phase not in (None, Phase.PENDING.value) else Phase.PENDING)
        b.requeue.append(ACTIVE_REQUEUE)
    return b.finish(Workloads.UP)


def regeneration_done(status: DSparkTrainingJobStatus, observed: Observed) -> bool:
    """Whether the data regeneration succeeded: recorded in the Regenerating condition, or the Job is Complete."""
    cond = status.condition(ConditionType.REGENERATING.value)
    recorded = cond is not None and cond.status == ConditionStatus.FALSE.value and cond.reason == REGEN_COMPLETED
    return recorded or (observed.regenerate is not None and observed.regenerate.complete)


def _regeneration(
    b: _Builder, policy: RunPolicySpec, observed: Observed, *, mooncake_ready: bool, ready: int, want: int
) -> Decision | None:
    """The data-regeneration stage: None once it succeeded (training may start); otherwise the Decision that
    keeps the trainer at zero replicas (and creates the Job once inference is ready), or fails the job."""
    st = b.status
    spec = b.job.spec
    assert spec is not None
    job = observed.regenerate
    name = regenerate_job_name(b.job.name)
    output = dataset_path_for_training(spec)
    if regeneration_done(st, observed):
        cond = st.condition(ConditionType.REGENERATING.value)
        if cond is None or cond.reason != REGEN_COMPLETED:
            counts = describe_summary(job.summary if job is not None else None)
            b.condition(
                ConditionType.REGENERATING,
                False,
                REGEN_COMPLETED,
                f"Job {name} regenerated the dataset into {output}" + (f" ({counts})" if counts else ""),
            )
        return None
    if job is not None and job.failed_reason is not None:
        detail = f"{job.failed_reason}: {job.failed_message}" if job.failed_message else job.failed_reason
        b.condition(ConditionType.REGENERATING, False, job.failed_reason, job.failed_message or job.failed_reason)
        msg = f"data regeneration Job {name} failed ({detail})"
        if job.pod_failure:
            msg += f"; its last failed pod: {job.pod_failure}"
        b.condition(ConditionType.FAILED, True, REGEN_FAILED, msg)
        return _fail(b, policy, REGEN_FAILED, msg)

    regen = spec.dataset.regenerate
    assert regen is not None
    inference_ready = ready >= want
    create = False
    if job is not None:
        pods = f"{job.active} running, {job.failed} failed (backoffLimit {regen.backoff_limit})"
        b.condition(
            ConditionType.REGENERATING,
            True,
            REGEN_RUNNING,
            f"Job {name} is regenerating the dataset into {output}: pods {pods}"
            + (" (being deleted)" if job.deleting else ""),
        )
    elif inference_ready:
        create = True
        b.condition(
            ConditionType.REGENERATING, True, REGEN_RUNNING, f"Job {name} is regenerating the dataset into {output}"
        )
    else:
        b.condition(
            ConditionType.REGENERATING,
            True,
            REGEN_WAITING,
            f"{min(ready, want)}/{want} inference replicas ready; the regeneration Job starts when all are",
        )
    b.condition(ConditionType.TRAINER_READY, False, "WaitingForRegeneration", "the trainer starts after regeneration")
    b.condition(ConditionType.RUNNING, False, "Regenerating", "the dataset is being regenerated by the target")
    anything_up = mooncake_ready or ready > 0 or job is not None
    if anything_up or st.phase not in (None, Phase.PENDING.value):
        b.phase(Phase.REGENERATING, f"regenerating the dataset into {output}")
    else:
        b.phase(Phase.PENDING)
    b.requeue.append(ACTIVE_REQUEUE)
    return b.finish(Workloads.UP, trainer_up=False, regenerate_job=create)


def _gang(b: _Builder, policy: RunPolicySpec, observed: Observed) -> Decision | None:
    """Gang bookkeeping: detect failures/restarts of trainer pods and restart the whole gang.

    Returns a final Decision when the job fails (backoff limit) or a gang restart is started;
    otherwise updates b.status.gang and returns None.
    """
    st = b.status
    spec = b.job.spec
    assert spec is not None
    nodes = spec.trainer.nodes
    gang = (st.gang or GangStatus()).model_copy(deep=True)
    pods = list(observed.trainer_pods)
    present = {p.uid for p in pods}
    terminating = [u for u in gang.terminating if u in present]
    live = [p for p in pods if p.uid not in set(terminating)]
    redelete = [(p.name, p.uid) for p in pods if p.uid in set(terminating) and not p.deleting]
    b.delete_pods = redelete  # pods we deleted before that still exist without a deletionTimestamp
    by_name = {p.name: p for p in live}
    revision = observed.trainer.update_revision if observed.trainer is not None else None

    failure: str | None = None
    roll: str | None = None
    if revision and any(p.revision and p.revision != revision and not p.deleting for p in live):
        roll = f"the trainer pod template changed (revision {revision}); restarting the gang on the new template"
    elif gang.members:
        for m in gang.members:
            p = by_name.get(m.name)
            if p is None:
                failure = f"trainer pod {m.name} disappeared"
            elif p.uid != m.uid:
                failure = f"trainer pod {m.name} was replaced"
            elif p.deleting:
                failure = f"trainer pod {m.name} is being deleted"
            elif p.restart_count > m.restart_count:
                failure = f"trainer pod {m.name} restarted" + (f" ({p.reason})" if p.reason else "")
            elif p.phase == "Failed":
                failure = f"trainer pod {m.name} failed" + (f" ({p.reason})" if p.reason else "")
            if failure:
                break
    else:
        for p in live:
            if p.phase == "Failed" or (p.restart_count > 0 and not p.deleting):
                failure = f"trainer pod {p.name} {'failed' if p.phase == 'Failed' else 'restarted'}" + (
                    f" ({p.reason})" if p.reason else ""
                )
                break

    if failure is not None or roll is not None:
        if failure is not None:
            st.restarts += 1
            if st.restarts > policy.backoff_limit:
                msg = f"{failure}; {st.restarts - 1} gang restarts already (backoffLimit={policy.backoff_limit})"
                b.condition(ConditionType.FAILED, True, "BackoffLimitExceeded", msg)
                return _fail(b, policy, "BackoffLimitExceeded", msg)
        victims = [p for p in live if not p.deleting]
        gang.terminating = terminating + [p.uid for p in live]
        gang.members = []
        gang.revision = None
        st.gang = gang
        if failure is not None:
            b.condition(
                ConditionType.RESTARTING,
                True,
                "GangRestart",
                f"{failure}; restarting all {nodes} trainer pods (restart {st.restarts} of {policy.backoff_limit})",
            )
        else:
            assert roll is not None
            b.condition(ConditionType.RESTARTING, True, "SpecChanged", roll)
        b.condition(ConditionType.TRAINER_READY, False, "GangRestart", "trainer pods are being recreated")
        b.condition(ConditionType.RUNNING, False, "Restarting", failure or roll or "")
        b.phase(Phase.STARTING, failure or roll or "")
        b.requeue.append(ACTIVE_REQUEUE)
        b.delete_pods = redelete + [(p.name, p.uid) for p in victims]
        return b.finish(Workloads.UP, gang_restart=failure is not None)

    if not gang.members and not terminating:
        ready = [
            p for p in live if p.running and p.ready and (not revision or not p.revision or p.revision == revision)
        ]
        if len(live) == nodes and len(ready) == nodes:
            gang.members = [
                GangMember(name=p.name, uid=p.uid, restart_count=p.restart_count)
                for p in sorted(ready, key=lambda p: p.name)
            ]
            gang.revision = revision
    gang.terminating = terminating
    st.gang = gang
    return None


def summarize_pods(pods: Sequence[PodInfo]) -> str:
    """One-line summary of trainer pods (for logs)."""
    return ", ".join(f"{p.name}:{p.phase}{'*' if p.deleting else ''}/{p.restart_count}" for p in pods) or "none"
