"""Level-based reconciliation of one job: observe, decide (pure), act.

`Reconciler.reconcile` never raises: every failure is logged, counted, reported on the job as an
event, and retried later with a growing delay, so no input can crash or hot-loop the operator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dspark_trainer.config import TransportProtocol
from pydantic import ValidationError

from dspark_operator.acceptance import accept, choose_spec, effective_view
from dspark_operator.api.job import InvalidSpec, JobView, parse_job
from dspark_operator.api.spec import RunPolicySpec
from dspark_operator.api.status import (
    OPERATOR_STATUS_FIELDS,
    TERMINAL_PHASES,
    Condition,
    ConditionStatus,
    ConditionType,
    DSparkTrainingJobStatus,
    Phase,
)
from dspark_operator.builders import BuildContext, build_children, workload_replicas
from dspark_operator.builders.common import spec_hash
from dspark_operator.builders.regenerate_job import (
    build_regenerate_job,
    failure_from_pods,
    job_conditions,
    summary_from_pod,
)
from dspark_operator.constants import (
    ANNOTATION_SPEC_HASH,
    API_VERSION,
    COMPONENT_INFERENCE,
    COMPONENT_MOONCAKE,
    COMPONENT_REGENERATE,
    COMPONENT_TRAINER,
    FIELD_MANAGER,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PODMONITOR_GROUP,
    PODMONITOR_VERSION,
)
from dspark_operator.drift import drifted_child
from dspark_operator.kube import KINDS, ApiError, KubeApi, kind_of
from dspark_operator.metrics import OperatorMetrics
from dspark_operator.queueing import (
    KUEUE_NOT_INSTALLED,
    Admission,
    AdmissionState,
    admission_of,
    build_workload,
    finished,
    released,
    workload_name,
)
from dspark_operator.rejections import invalid_from_rejection
from dspark_operator.scheduling import CreateFailure, MissingObject, Verdict, placement_from_pod, verdict
from dspark_operator.settings import Settings
from dspark_operator.status import (
    Decision,
    Event,
    Observed,
    Workloads,
    decide,
    fmt_time,
    job_info,
    parse_time,
    pod_info,
    regeneration_done,
    workload_info,
)

log = logging.getLogger("dspark_operator.reconcile")

JOB_KIND = KINDS[KIND]
CHILD_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment", "StatefulSet")
FIRST_WAVE = frozenset({"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service"})
# Answers of a dry run that mean "this object, as built from the spec, will never be accepted".
REJECTED_STATUSES = frozenset({400, 413, 422})
# FailedCreate events older than this are not news (a StatefulSet keeps its events for an hour).
CREATE_FAILURE_WINDOW = 300.0
PODMONITOR_RECHECK_SECONDS = 300.0
NODES_RECHECK_SECONDS = 60.0
MIN_ERROR_BACKOFF = 5.0
BUILT_CACHE_SIZE = 512
MAX_ERROR_BACKOFF = 300.0


class EventSink(Protocol):
    """Posts Kubernetes events on a job."""

    def post(self, job: Mapping[str, Any], event: Event) -> None:
        """Post one event (must not raise)."""


class LogEventSink:
    """An EventSink that only logs (used when no Kopf context is around, e.g. in unit tests)."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, Event]] = []

    def post(self, job: Mapping[str, Any], event: Event) -> None:
        """Remember and log the event."""
        name = (job.get("metadata") or {}).get("name", "?")
        self.posted.append((name, event))
        log.info("event %s on %s: %s %s", event.type, name, event.reason, event.message)


@dataclasses.dataclass
class ReconcileOutcome:
    """What one reconciliation did (for the worker loop, metrics and tests)."""

    result: str
    requeue_after: float | None
    phase: str | None = None
    status_resource_version: str | None = None
    applied: int = 0


def utcnow() -> dt.datetime:
    """The current time in UTC."""
    return dt.datetime.now(dt.UTC)


def selector(job_name: str, component: str | None = None) -> str:
    """Label selector of a job's children (optionally of one component)."""
    parts = [f"{LABEL_INSTANCE}={job_name}", f"{LABEL_MANAGED_BY}={MANAGED_BY}"]
    if component:
        parts.append(f"{LABEL_COMPONENT}={component}")
    return ",".join(parts)


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether obj has a controller owner reference to the job with this uid."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("kind") == KIND and r.get("controller") for r in refs)


def best_effort_run_policy(body: Mapping[str, Any]) -> RunPolicySpec | None:
    """The run policy of a job whose spec is otherwise invalid (for TTL), or None."""
    raw = (body.get("spec") or {}).get("runPolicy") if isinstance(body.get("spec"), Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    try:
        return RunPolicySpec.model_validate(dict(raw))
    except ValidationError:
        return None


def status_patch(raw_status: Mapping[str, Any], new: DSparkTrainingJobStatus) -> dict[str, Any] | None:
    """The operator's one writer of the job's status: the merge patch from the current status to the new one
    (the keys of OPERATOR_STATUS_FIELDS only; `progress` is the trainer's); None if equal."""
    wire = new.to_wire()
    patch: dict[str, Any] = {}
    for key in OPERATOR_STATUS_FIELDS:
        if key in wire:
            if raw_status.get(key) != wire[key]:
                patch[key] = wire[key]
        elif raw_status.get(key) is not None:
            patch[key] = None
    return patch or None


def _component(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT, ""))


def _newly_failed(job: JobView, decision: Decision) -> bool:
    return decision.status.phase == Phase.FAILED.value and job.status.phase != Phase.FAILED.value


def decision_needs_scheduling(job: JobView, observed: Observed) -> bool:
    """Whether the Schedulable condition is worth computing: children exist and the job is not suspended."""
    return bool(observed.children) and job.spec is not None and not job.spec.run_policy.suspend


def _all_running(observed: Observed, existing: Mapping[tuple[str, str], Mapping[str, Any]]) -> bool:
    """Every pod the workloads want exists and runs."""
    want = 0
    for (kind, _), obj in existing.items():
        if kind in ("Deployment", "StatefulSet"):
            want += int((obj.get("spec") or {}).get("replicas") or 0)
    running = [p for p in observed.placements if p.phase == "Running" and not p.deleting]
    workload_pods = [p for p in running if p.component != COMPONENT_REGENERATE]
    return len(workload_pods) >= want and all(
        p.phase in ("Running", "Succeeded") for p in observed.placements if not p.deleting
    )


APPLY = "apply"  # server-side apply of the manifest
REVERT = "revert"  # a hand edit: merge-patch the manifest back (lists replaced whole, so added items go too)


def child_action(manifest: Mapping[str, Any], existing: Mapping[str, Any] | None) -> str | None:
    """What a child needs: APPLY when missing, of another spec hash or replica count; REVERT when a field the
    operator sets was changed by someone else (the hash annotation left alone); None when it is as built."""
    if existing is None:
        return APPLY
    have = ((existing.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
    want = (manifest.get("metadata") or {}).get("annotations", {}).get(ANNOTATION_SPEC_HASH) or spec_hash(manifest)
    if have != want:
        return APPLY
    replicas = workload_replicas(dict(manifest))
    if replicas is not None and (existing.get("spec") or {}).get("replicas") != replicas:
        return APPLY
    return REVERT if drifted_child(manifest, existing) else None


def needs_apply(manifest: Mapping[str, Any], existing: Mapping[str, Any] | None) -> bool:
    """Whether a child must be written (applied or reverted)."""
    return child_action(manifest, existing) is not None


def revert_patch(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that puts a hand-edited child back: the manifest's fields (a merge patch replaces lists
    whole, which server-side apply would not do for items another field manager added)."""
    meta = manifest.get("metadata") or {}
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    return {"metadata": {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}, **body}


class Reconciler:
    """Reconciles one job at a time (the caller serialises calls per job)."""

    def __init__(
        self,
        api: KubeApi,
        settings: Settings,
        metrics: OperatorMetrics,
        events: EventSink,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self._podmonitor: bool | None = None
        self._podmonitor_checked = 0.0
        self._rdma_nodes: dict[str, bool | None] = {}  # RDMA resource name -> some node advertises it
        self._nodes_checked = 0.0
        self._errors: dict[str, int] = {}
        self._built: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self._rejected: dict[tuple[str, int], InvalidSpec] = {}  # (uid, generation) the dry run refused
        self._last_error: dict[str, str] = {}

    # ---------------------------------------------------------------- entry point
    async def reconcile(self, namespace: str, name: str) -> ReconcileOutcome:
        """Bring one job one step closer to its desired state. Never raises."""
        key = f"{namespace}/{name}"
        start = time.monotonic()
        try:
            outcome = await self._reconcile(namespace, name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            count = self._errors.get(key, 0) + 1
            self._errors[key] = count
            delay = min(MAX_ERROR_BACKOFF, MIN_ERROR_BACKOFF * 2 ** (count - 1))
            message = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ApiError):
                log.warning("reconcile %s failed (retry in %.0fs): %s", key, delay, message)
            else:
                log.exception("reconcile %s failed with an unexpected error (retry in %.0fs)", key, delay)
            if self._last_error.get(key) != message:
                self._last_error[key] = message
                self.events.post(
                    {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace}},
                    Event("Warning", "ReconcileError", f"{message[:900]} (retrying in {delay:.0f}s)"),
                )
            outcome = ReconcileOutcome(result="error", requeue_after=delay)
        else:
            self._errors.pop(key, None)
            self._last_error.pop(key, None)
        finally:
            elapsed = time.monotonic() - start
            self.metrics.reconcile_seconds.observe(elapsed)
        self.metrics.reconcile_total.labels(result=outcome.result).inc()
        return outcome

    async def _reconcile(self, namespace: str, name: str) -> ReconcileOutcome:
        body = await self.api.get(JOB_KIND.item(namespace, name))
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            if body is not None:
                self.metrics.set_phase(body["metadata"].get("uid", ""), None)
            return ReconcileOutcome(result="gone", requeue_after=None)
        parsed = parse_job(body)
        now = self.clock()
        terminal = (parsed.status.phase or "") in TERMINAL_PHASES
        choice = choose_spec(parsed, rejected=self._rejected.get((parsed.uid, parsed.generation)))
        job = effective_view(parsed, choice)
        if not job.raw_status and job.spec is not None:
            # Never reconciled: nothing of ours can be trusted to exist, and applying is idempotent
            # (children left by an operator that died before writing the status are re-applied as no-ops).
            await self.podmonitor_available()
            existing: dict[tuple[str, str], dict[str, Any]] = {}
            observed = Observed()
        else:
            existing, observed = await self.observe(job, workloads_only=terminal or job.spec is None)
        if choice.candidate and not terminal:
            # The latest generation is used only once every child built from it passes the API server's dry run.
            problem = await self._validate(job, existing)
            if problem is not None:
                self._remember_rejection(parsed, problem)
                choice = choose_spec(parsed, rejected=problem)
                job = effective_view(parsed, choice)
            else:
                job = accept(job)
        queued_workload: dict[str, Any] | None = None
        if job.spec is not None and job.spec.scheduling.queue_name:
            queued_workload, admission = await self._observe_admission(job, job.spec.scheduling.queue_name)
            observed = dataclasses.replace(observed, admission=admission)
        if job.spec is not None and not terminal and decision_needs_scheduling(job, observed):
            observed = dataclasses.replace(observed, schedulable=await self._schedulable(job, existing, observed, now))
        policy = best_effort_run_policy(body) if job.spec is None else None
        decision = decide(job, observed, now, run_policy=policy)
        if (decision.gang_restart or decision.delete_pods or _newly_failed(job, decision)) and (
            await self._namespace_terminating(namespace)
        ):
            # The namespace is being deleted: its pods go first. That is no failure of the job.
            return ReconcileOutcome(result="gone", requeue_after=None)
        applied = 0
        try:
            if decision.workloads is Workloads.UP:
                decision.status.transport_protocol = await self.transport_protocol(job)
                applied = await self._apply_children(job, existing, decision)
            if decision.workloads is Workloads.DOWN:
                await self._scale_down(existing)
        except ApiError as err:
            if await self._namespace_terminating(namespace):
                return ReconcileOutcome(result="gone", requeue_after=None)
            await self._report_apply_error(job, decision, err, now)
            raise
        await self._delete_pods(namespace, decision.delete_pods)
        await self._act_on_workload(job, decision, queued_workload, observed, now)
        if decision.gang_restart:
            self.metrics.gang_restart(namespace, name)
        rv = await self._write_status(job, decision)
        for event in decision.events:
            self.events.post(body, event)
        if decision.delete_job:
            await self.api.delete(JOB_KIND.item(namespace, name), uid=job.uid, propagation="Background")
            self.metrics.set_phase(job.uid, None)
            return ReconcileOutcome(result=decision.result, requeue_after=None, phase=None, applied=applied)
        phase = decision.status.phase
        self.metrics.set_phase(job.uid, str(phase) if phase else None, namespace=namespace, name=name)
        return ReconcileOutcome(
            result=decision.result,
            requeue_after=decision.requeue_after,
            phase=str(phase) if phase else None,
            status_resource_version=rv,
            applied=applied,
        )

    def _remember_rejection(self, job: JobView, problem: InvalidSpec) -> None:
        """A generation the dry run refused stays refused (it is not validated again on every pass)."""
        if len(self._rejected) >= BUILT_CACHE_SIZE:
            self._rejected.pop(next(iter(self._rejected)))
        self._rejected[(job.uid, job.generation)] = problem

    async def _report_apply_error(self, job: JobView, decision: Decision, err: ApiError, now: dt.datetime) -> None:
        """An apply the API server refused for a reason other than the spec (permissions, quota, an outage): say so
        in the job's status (phase Pending until something exists) before the error is retried."""
        status = decision.status
        status.phase = status.phase or Phase.PENDING
        message = f"applying the children failed, retrying: {err.status} {err.reason}: {err.message}"[:2000]
        others = [c for c in status.conditions if c.type != ConditionType.CREATED.value]
        status.conditions = [
            *others,
            Condition(
                type=ConditionType.CREATED.value,
                status=ConditionStatus.FALSE,
                reason="ApplyFailed",
                message=message,
                last_transition_time=fmt_time(now),
                observed_generation=job.generation,
            ),
        ]
        try:
            await self._write_status(job, decision)
        except ApiError as write_err:
            log.warning("%s/%s: cannot record the apply error: %s", job.namespace, job.name, write_err.message)

    async def _namespace_terminating(self, namespace: str) -> bool:
        """Whether the job's namespace is being deleted (False when it cannot be read)."""
        try:
            ns = await self.api.get(KINDS["Namespace"].item(None, namespace))
        except ApiError as err:
            log.debug("cannot read namespace %s: %s", namespace, err.message)
            return False
        if ns is None:
            return False  # the job was just read: its namespace exists (a watch cache may lag)
        return bool((ns.get("metadata") or {}).get("deletionTimestamp")) or (
            (ns.get("status") or {}).get("phase") == "Terminating"
        )

    # ---------------------------------------------------------------- Kueue
    async def _observe_admission(self, job: JobView, queue: str) -> tuple[dict[str, Any] | None, Admission]:
        """The job's Kueue Workload (only one this job owns) and what it says; while it waits, the ClusterQueue
        its LocalQueue points to."""
        if not await self.api.api_group_exists("kueue.x-k8s.io/v1beta2"):
            return None, Admission(
                AdmissionState.MISSING, reason=KUEUE_NOT_INSTALLED,
                message=(
                    "spec.scheduling.queueName is set, but this cluster serves no Kueue API (kueue.x-k8s.io/v1beta2): "
                    "install Kueue (with DSparkTrainingJob.v1alpha1.dspark.io in integrations.externalFrameworks), "
                    "or drop spec.scheduling.queueName to run without a queue"
                ),
            )
        wl = await self.api.get(KINDS["Workload"].item(job.namespace, workload_name(job.name)))
        if wl is not None and not owned_by(wl, job.uid):
            raise ApiError(409, "Conflict", f"Workload {workload_name(job.name)} exists and is not this job's")
        admission = admission_of(wl)
        if admission.state in (AdmissionState.MISSING, AdmissionState.QUEUED):
            try:
                lq = await self.api.get(KINDS["LocalQueue"].item(job.namespace, queue))
            except ApiError as err:
                log.debug("cannot read LocalQueue %s/%s: %s", job.namespace, queue, err.message)
                lq = None
            cq = ((lq or {}).get("spec") or {}).get("clusterQueue")
            if lq is None:
                admission = dataclasses.replace(
                    admission, message=f"LocalQueue {job.namespace}/{queue} does not exist (create it, or fix "
                    "spec.scheduling.queueName)")
            admission = dataclasses.replace(admission, cluster_queue=cq)
        return wl, admission

    async def _priority(self, name: str | None) -> int | None:
        """The value of a PriorityClass (the Workload's priority, which decides who Kueue preempts)."""
        if not name:
            return None
        pc = await self.api.get(KINDS["PriorityClass"].item(None, name))
        return int(pc["value"]) if pc is not None and "value" in pc else None

    async def _act_on_workload(
        self, job: JobView, decision: Decision, workload: dict[str, Any] | None, observed: Observed, now: dt.datetime
    ) -> None:
        """Create the job's Workload, give its quota back after an eviction, or mark it Finished (once no pod of
        the job runs any more: the quota is free only when the pods are gone)."""
        if job.spec is None or not job.spec.scheduling.queue_name:
            return
        path = KINDS["Workload"].item(job.namespace, workload_name(job.name))
        phase = str(decision.status.phase or "")
        if phase in TERMINAL_PHASES:
            if any(p.phase not in ("Succeeded", "Failed") for p in observed.placements):
                decision.requeue_after = min(decision.requeue_after or 5.0, 5.0)
                return
            if workload is not None and admission_of(workload).state is not AdmissionState.FINISHED:
                body = finished(workload, succeeded=phase == Phase.SUCCEEDED.value,
                                message=f"DSparkTrainingJob {phase}", now=now)
                await self.api.request("PUT", path + "/status", body=body)
            return
        if decision.workload_action == "create" and workload is None:
            protocol = decision.status.transport_protocol or await self.transport_protocol(job)
            decision.status.transport_protocol = protocol
            ctx = self._context(job, protocol)
            manifest = build_workload(
                name=job.name, namespace=job.namespace, uid=job.uid, queue_name=job.spec.scheduling.queue_name,
                manifests=self._manifests(job, ctx, trainer_up=True),
                labels={LABEL_INSTANCE: job.name, LABEL_MANAGED_BY: MANAGED_BY},
                priority=await self._priority(job.spec.scheduling.priority_class_name),
                priority_class_name=job.spec.scheduling.priority_class_name,
            )
            try:
                await self.api.request("POST", KINDS["Workload"].collection(job.namespace), body=manifest)
            except ApiError as err:
                if err.status != 409:
                    raise
        elif decision.workload_action == "release" and workload is not None:
            await self.api.request("PUT", path + "/status", body=released(workload, now))

    # ---------------------------------------------------------------- observe
    async def podmonitor_available(self) -> bool:
        """Whether the Prometheus Operator's PodMonitor API exists (cached, rechecked every few minutes)."""
        now = time.monotonic()
        if self._podmonitor is None or now - self._podmonitor_checked > PODMONITOR_RECHECK_SECONDS:
            self._podmonitor = await self.api.api_group_exists(f"{PODMONITOR_GROUP}/{PODMONITOR_VERSION}")
            self._podmonitor_checked = now
        return self._podmonitor

    async def rdma_advertised(self, resource: str) -> bool | None:
        """Whether some node advertises the extended resource `resource` (cached; None when nodes cannot be
        listed, e.g. an operator limited to namespaces)."""
        now = time.monotonic()
        if resource not in self._rdma_nodes or now - self._nodes_checked > NODES_RECHECK_SECONDS:
            advertised: bool | None
            try:
                nodes = await self.api.list(KINDS["Node"].collection(None))
                advertised = any(
                    str(((n.get("status") or {}).get("allocatable") or {}).get(resource, "0")) not in ("0", "")
                    for n in nodes
                )
            except ApiError as err:
                log.warning("cannot list nodes (%s): transport protocol auto means tcp", err.message)
                advertised = None
            self._rdma_nodes = {resource: advertised}
            self._nodes_checked = now
        return self._rdma_nodes[resource]

    async def transport_protocol(self, job: JobView) -> str:
        """The job's Mooncake protocol: the spec's, or the one decided for `auto` (kept in the status, so a job
        never changes protocol once its children exist)."""
        assert job.spec is not None
        chosen = str(job.spec.transport.protocol)
        if chosen != TransportProtocol.AUTO:
            return chosen
        if job.status.transport_protocol in (TransportProtocol.RDMA, TransportProtocol.TCP):
            return job.status.transport_protocol
        rdma = await self.rdma_advertised(job.spec.transport.rdma_resource_name)
        return str(TransportProtocol.RDMA if rdma else TransportProtocol.TCP)

    async def observe(
        self, job: JobView, *, workloads_only: bool = False
    ) -> tuple[dict[tuple[str, str], dict[str, Any]], Observed]:
        """List the job's children (only ours: controller owner reference to this job's uid)."""
        kinds: list[str] = ["Deployment", "StatefulSet"] if workloads_only else list(CHILD_KINDS)
        if not workloads_only and await self.podmonitor_available():
            kinds.append("PodMonitor")
        regenerate = job.spec is not None and job.spec.dataset.regenerate is not None
        if regenerate:
            kinds.append("Job")  # listed only for jobs that regenerate (the operator may lack batch permissions)
        sel = selector(job.name)
        lists = await asyncio.gather(
            *(self.api.list(KINDS[k].collection(job.namespace), sel) for k in kinds),
            self.api.list(KINDS["Pod"].collection(job.namespace), sel),
        )
        existing: dict[tuple[str, str], dict[str, Any]] = {}
        for kind, items in zip(kinds, lists[:-1], strict=True):
            for obj in items:
                if owned_by(obj, job.uid):
                    existing[(kind, obj["metadata"]["name"])] = obj
        all_pods = sorted(lists[-1], key=lambda p: str(p["metadata"]["name"]))
        trainer_pods = [p for p in all_pods if _component(p) == COMPONENT_TRAINER]
        pods = tuple(pod_info(p) for p in trainer_pods)
        placements = tuple(placement_from_pod(p, _component(p)) for p in all_pods)

        def workload(kind: str, component: str) -> Any:
            for (k, _), obj in existing.items():
                labels = obj["metadata"].get("labels") or {}
                if k == kind and labels.get(LABEL_COMPONENT) == component:
                    return workload_info(obj)
            return None

        observed = Observed(
            children=frozenset(existing),
            mooncake=workload("Deployment", COMPONENT_MOONCAKE),
            inference=workload("Deployment", COMPONENT_INFERENCE),
            trainer=workload("StatefulSet", COMPONENT_TRAINER),
            trainer_pods=pods,
            placements=placements,
        )
        if regenerate:
            observed = dataclasses.replace(observed, regenerate=await self._observe_regeneration(job, existing))
        return existing, observed

    async def _observe_regeneration(self, job: JobView, existing: Mapping[tuple[str, str], Mapping[str, Any]]) -> Any:
        """The regeneration Job, with the counts its succeeded pod reported (read once, when it completes)."""
        obj = next((o for (k, _), o in existing.items() if k == "Job"), None)
        if obj is None:
            return None
        summary, pod_failure = None, ""
        conditions = job_conditions(obj)
        settled = regeneration_done(job.status, Observed()) or job.status.phase in TERMINAL_PHASES
        if ("Complete" in conditions or "Failed" in conditions) and not settled:
            # Once, when the Job just finished: what its pods reported (counts, or the error of the last failure).
            pods = await self.api.list(KINDS["Pod"].collection(job.namespace), selector(job.name, COMPONENT_REGENERATE))
            for pod in pods:
                if (pod.get("status") or {}).get("phase") == "Succeeded":
                    summary = summary_from_pod(pod) or summary
            pod_failure = failure_from_pods(pods) if "Failed" in conditions else ""
        return job_info(obj, summary, pod_failure)

    async def _schedulable(
        self,
        job: JobView,
        existing: Mapping[tuple[str, str], Mapping[str, Any]],
        observed: Observed,
        now: dt.datetime,
    ) -> Verdict:
        """Why the job's pods do not run, if they do not: what the scheduler and the workload controllers say, and
        the objects the spec names that are missing (looked up only while something is missing or pending)."""
        spec = job.spec
        assert spec is not None
        missing: list[MissingObject] = []
        failures: list[CreateFailure] = []
        if not _all_running(observed, existing):
            missing = await self._missing_objects(job)
            failures = await self._create_failures(job, existing, observed, now)
        ref = spec.target.hf_token_secret_ref
        return verdict(
            observed.placements,
            missing,
            failures,
            now=now,
            grace_seconds=self.settings.scheduler_grace_seconds,
            gpu_resource=spec.scheduling.gpu_resource_name,
            secret_field=("spec.target.hfTokenSecretRef", ref.name) if ref is not None else None,
        )

    async def _missing_objects(self, job: JobView) -> list[MissingObject]:
        """The PersistentVolumeClaims and the PriorityClass the spec names that do not exist."""
        spec = job.spec
        assert spec is not None
        wanted: list[tuple[str, str, str]] = [
            (field, "PersistentVolumeClaim", claim)
            for field, claim in (
                ("spec.dataset.claimName", spec.dataset.claim_name),
                ("spec.target.modelClaimName", spec.target.model_claim_name),
                ("spec.trainer.output.claimName", spec.trainer.output.claim_name),
            )
            if claim
        ]
        if spec.scheduling.priority_class_name:
            wanted.append(("spec.scheduling.priorityClassName", "PriorityClass", spec.scheduling.priority_class_name))

        async def exists(kind: str, name: str) -> bool:
            try:
                return await self.api.get(KINDS[kind].item(job.namespace, name)) is not None
            except ApiError as err:  # e.g. no permission to read it: say nothing rather than something wrong
                log.debug("cannot look up %s %s: %s", kind, name, err.message)
                return True

        found = await asyncio.gather(*(exists(kind, name) for _, kind, name in wanted))
        return [MissingObject(f, k, n) for (f, k, n), ok in zip(wanted, found, strict=True) if not ok]

    async def _create_failures(
        self,
        job: JobView,
        existing: Mapping[tuple[str, str], Mapping[str, Any]],
        observed: Observed,
        now: dt.datetime,
    ) -> list[CreateFailure]:
        """Workloads whose controller cannot create pods: a Deployment's ReplicaFailure condition, or the
        FailedCreate events of a StatefulSet that has fewer pods than replicas."""
        out: list[CreateFailure] = []
        for (kind, name), obj in existing.items():
            if kind == "Deployment":
                for cond in (obj.get("status") or {}).get("conditions") or []:
                    if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                        out.append(CreateFailure(f"Deployment/{name}", str(cond.get("message") or cond.get("reason"))))
            elif kind == "StatefulSet":
                want = int((obj.get("spec") or {}).get("replicas") or 0)
                if len(observed.trainer_pods) >= want:
                    continue
                fields = f"involvedObject.kind=StatefulSet,involvedObject.name={name},reason=FailedCreate"
                try:
                    data = await self.api.request(
                        "GET", KINDS["Event"].collection(job.namespace), [("fieldSelector", fields)]
                    )
                except ApiError as err:
                    log.debug("cannot list the events of StatefulSet %s: %s", name, err.message)
                    continue
                events = sorted(
                    (
                        e
                        for e in (data or {}).get("items") or []
                        if (seen := parse_time(str(e.get("lastTimestamp") or e.get("eventTime") or ""))) is not None
                        and (now - seen).total_seconds() <= CREATE_FAILURE_WINDOW
                    ),
                    key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""),
                )
                if events:
                    out.append(CreateFailure(f"StatefulSet/{name}", str(events[-1].get("message") or "")))
        return out

    # ---------------------------------------------------------------- act
    def _context(self, job: JobView, protocol: str) -> BuildContext:
        assert job.spec is not None
        return BuildContext(
            name=job.name,
            namespace=job.namespace,
            uid=job.uid,
            spec=job.spec,
            trainer_image=self.settings.trainer_image,
            inference_image=self.settings.inference_image,
            podmonitor_available=bool(self._podmonitor),
            rdma_available=protocol == TransportProtocol.RDMA,
        )

    def _manifests(self, job: JobView, ctx: BuildContext, *, trainer_up: bool) -> list[dict[str, Any]]:
        """Every child built from the job's spec (the regeneration Job included), cached per spec generation."""
        assert job.spec is not None
        key = (
            job.uid,
            job.spec_generation,
            ctx.podmonitor_available,
            ctx.trainer_image,
            ctx.inference_image,
            trainer_up,
            ctx.protocol,
        )
        manifests = self._built.get(key)
        if manifests is None:
            manifests = build_children(ctx, trainer_up=trainer_up)
            if job.spec.dataset.regenerate is not None:
                manifests.append(build_regenerate_job(ctx))
            # The spec of one generation never changes: remember its manifests (bounded).
            if len(self._built) >= BUILT_CACHE_SIZE:
                self._built.pop(next(iter(self._built)))
            self._built[key] = manifests
        return manifests

    async def _validate(
        self, job: JobView, existing: Mapping[tuple[str, str], Mapping[str, Any]]
    ) -> InvalidSpec | None:
        """Build every child from the job's (new) spec and let the API server validate them all (server-side dry
        run) before any is applied: a refused spec leaves nothing behind. The problem, or None. API errors that are
        not about the spec (permissions, outages) are raised."""
        assert job.spec is not None
        transport = job.spec.transport
        if transport.protocol == TransportProtocol.RDMA and await self.rdma_advertised(
            transport.rdma_resource_name
        ) is False:
            return InvalidSpec(
                "spec.transport.protocol",
                f"rdma, but no node advertises {transport.rdma_resource_name}; use auto (rdma where nodes advertise "
                "it, tcp otherwise) or tcp, or set spec.transport.rdmaResourceName to the resource your RDMA device "
                "plugin advertises",
            )
        ctx = self._context(job, await self.transport_protocol(job))
        try:
            manifests = self._manifests(job, ctx, trainer_up=True)
        except (ValidationError, ValueError) as err:
            return InvalidSpec("spec", f"cannot build the children: {err}")
        # A regeneration Job that exists is never updated (its template is immutable): only a new one is checked.
        # RoleBindings are built from validated names only, and a dry run of one whose Role does not exist yet is
        # refused (the API server cannot check the binding against a Role it does not have) unless the operator
        # may `bind` any role, which it is not granted.
        checked = [
            m for m in manifests
            if m["kind"] != "RoleBinding" and (m["kind"] != "Job" or (m["kind"], m["metadata"]["name"]) not in existing)
        ]
        try:
            await self._gather_apply(checked, dry_run=True)
        except _Rejected as rejected:
            return rejected.invalid
        return None

    async def _apply_children(
        self, job: JobView, existing: Mapping[tuple[str, str], Mapping[str, Any]], decision: Decision
    ) -> int:
        assert decision.status.transport_protocol is not None
        ctx = self._context(job, decision.status.transport_protocol)
        manifests = self._manifests(job, ctx, trainer_up=decision.trainer_up)
        # The regeneration Job is created once, when the decision asks for it, and never updated (its pod template
        # is immutable); it was validated with the other children when its generation was accepted.
        jobs = [m for m in manifests if m["kind"] == "Job" and (m["kind"], m["metadata"]["name"]) not in existing]
        actions = {
            id(m): child_action(m, existing.get((m["kind"], m["metadata"]["name"])))
            for m in manifests
            if m["kind"] != "Job"
        }
        todo = [m for m in manifests if actions.get(id(m)) == APPLY]
        reverts = [m for m in manifests if actions.get(id(m)) == REVERT]
        if decision.regenerate_job:
            todo += jobs
        first = [m for m in todo if m["kind"] in FIRST_WAVE]
        second = [m for m in todo if m["kind"] not in FIRST_WAVE]
        await self._gather_apply(first, dry_run=False)
        await self._gather_apply(second, dry_run=False)
        for m in reverts:
            log.info(
                "%s/%s: %s %s was edited by hand; putting it back",
                job.namespace,
                job.name,
                m["kind"],
                m["metadata"]["name"],
            )
        await asyncio.gather(
            *(
                self.api.merge_patch(kind_of(m).item(job.namespace, m["metadata"]["name"]), revert_patch(m))
                for m in reverts
            )
        )
        # Children that are no longer wanted (e.g. the PodMonitor after metrics.podMonitor: false).
        wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
        stale = [(k, n, o) for (k, n), o in existing.items() if (k, n) not in wanted]
        await asyncio.gather(
            *(self.api.delete(KINDS[k].item(job.namespace, n), uid=o["metadata"].get("uid")) for k, n, o in stale)
        )
        return len(todo) + len(reverts)

    async def _gather_apply(self, manifests: Sequence[dict[str, Any]], *, dry_run: bool) -> None:
        async def one(m: dict[str, Any]) -> None:
            try:
                if dry_run:
                    meta = m["metadata"]
                    await self.api.request(
                        "PATCH",
                        kind_of(m).item(meta["namespace"], meta["name"]),
                        [("fieldManager", FIELD_MANAGER), ("force", "true"), ("dryRun", "All")],
                        m,
                        "application/apply-patch+yaml",
                    )
                else:
                    await self.api.apply(m)
            except ApiError as err:
                if err.status == 404 and m["kind"] == "PodMonitor":
                    self._podmonitor = False  # the Prometheus Operator CRDs went away: stop creating PodMonitors
                    return
                if dry_run and err.status in REJECTED_STATUSES:
                    raise _Rejected(invalid_from_rejection(m, err.body, err.message)) from err
                raise

        await asyncio.gather(*(one(m) for m in manifests))

    async def _scale_down(self, existing: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        # A regeneration Job that still runs is deleted (its pods with it); a rerun resumes from the committed shards.
        unfinished = [
            obj
            for (kind, _), obj in existing.items()
            if kind == "Job"
            and not {"Complete", "Failed"} & set(job_conditions(obj))
            and not (obj.get("metadata") or {}).get("deletionTimestamp")
        ]
        await asyncio.gather(
            *(
                self.api.delete(
                    KINDS["Job"].item(obj["metadata"]["namespace"], obj["metadata"]["name"]),
                    uid=obj["metadata"].get("uid"),
                    propagation="Background",
                )
                for obj in unfinished
            )
        )
        todo = [
            (kind, obj)
            for (kind, _), obj in existing.items()
            if kind in ("Deployment", "StatefulSet") and (obj.get("spec") or {}).get("replicas") != 0
        ]
        await asyncio.gather(
            *(
                self.api.merge_patch(
                    KINDS[kind].item(obj["metadata"]["namespace"], obj["metadata"]["name"]) + "/scale",
                    {"spec": {"replicas": 0}},
                )
                for kind, obj in todo
            )
        )

    async def _delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        await asyncio.gather(*(self.api.delete(KINDS["Pod"].item(namespace, n), uid=u) for n, u in pods))

    async def _write_status(self, job: JobView, decision: Decision) -> str | None:
        patch = status_patch(job.raw_status, decision.status)
        if patch is None:
            return None
        result = await self.api.merge_patch(JOB_KIND.item(job.namespace, job.name) + "/status", {"status": patch})
        return str(((result or {}).get("metadata") or {}).get("resourceVersion") or "") or None


class _Rejected(Exception):
    """The API server (or the builders) rejected what the spec produces."""

    def __init__(self, invalid: InvalidSpec) -> None:
        super().__init__(str(invalid))
        self.invalid = invalid
