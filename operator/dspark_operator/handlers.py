"""Kopf handlers: watch jobs and their children, and run one reconcile worker per job.

Design (level-based):
- Every watch event of a job (the initial listing after an operator (re)start included, so jobs
  are resumed; creation; spec updates; status changes from the trainer) wakes that job's worker.
- Events of the job's trainer pods, Deployments, StatefulSets and its data-regeneration Job wake the
  job's worker too, so a failed or deleted trainer pod, or a finished regeneration, is noticed at once;
  so do its ConfigMap, Services, Role and RoleBinding, so a hand edit of one is taken back at once.
- The worker reconciles (observe, decide, act) and then waits for the next wake-up, at most the
  decision's requeue delay or the periodic resync interval: the periodic check of observed vs.
  desired state.
- A job is reconciled by at most one worker at a time, and at most N jobs at once overall.

Kopf's own timers and daemons are not used on purpose: they put a finalizer on every job, which
would block `kubectl delete` while the operator is down. Children are garbage-collected through
owner references, so nothing needs finalizing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from dspark_operator.constants import (
    API_VERSION,
    COMPONENT_TRAINER,
    GROUP,
    KIND,
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PLURAL,
    VERSION,
)
from dspark_operator.kube import KubeApi, load_configuration
from dspark_operator.metrics import OperatorMetrics
from dspark_operator.reconcile import Reconciler
from dspark_operator.settings import Settings
from dspark_operator.status import Event

log = logging.getLogger("dspark_operator")

DEBOUNCE_SECONDS = 0.05


class KopfEventSink:
    """Posts Kubernetes events through Kopf's event queue (batched, non-blocking)."""

    def post(self, job: Mapping[str, Any], event: Event) -> None:
        """Post one event on the job; never raises."""
        meta = job.get("metadata") or {}
        log.info("%s/%s: %s %s: %s", meta.get("namespace"), meta.get("name"), event.type, event.reason, event.message)
        body = {
            "apiVersion": job.get("apiVersion", API_VERSION),
            "kind": job.get("kind", KIND),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        }
        try:
            kopf.event(cast(Any, body), type=event.type, reason=event.reason, message=event.message[:1000])
        except Exception:
            log.debug("could not post event %s", event, exc_info=True)


@dataclasses.dataclass
class _Worker:
    task: asyncio.Task[None]
    wake: asyncio.Event
    written_rv: str | None = None


class JobWorkers:
    """One asyncio task per job that reconciles it whenever woken, and periodically."""

    def __init__(self, reconciler: Reconciler, settings: Settings) -> None:
        self.reconciler = reconciler
        self.settings = settings
        self._workers: dict[tuple[str, str], _Worker] = {}
        self._limit = asyncio.Semaphore(max(1, settings.max_concurrent_reconciles))
        self._closing = False

    def __len__(self) -> int:
        return len(self._workers)

    def touch(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        """Wake (or start) the worker of a job. A job event carrying the resourceVersion of the operator's
        own last status write is ignored (nothing new to see)."""
        if self._closing:
            return
        key = (namespace, name)
        worker = self._workers.get(key)
        if worker is None or worker.task.done():
            wake = asyncio.Event()
            task = asyncio.create_task(self._run(key, wake), name=f"dspark-job/{namespace}/{name}")
            self._workers[key] = worker = _Worker(task=task, wake=wake)
        elif resource_version is not None and resource_version == worker.written_rv:
            return
        worker.wake.set()

    def forget(self, namespace: str, name: str) -> None:
        """Stop the worker of a deleted job."""
        worker = self._workers.pop((namespace, name), None)
        if worker is not None:
            worker.task.cancel()

    async def close(self) -> None:
        """Stop every worker."""
        self._closing = True
        tasks = [w.task for w in self._workers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()

    async def _run(self, key: tuple[str, str], wake: asyncio.Event) -> None:
        namespace, name = key
        try:
            while True:
                await wake.wait()
                await asyncio.sleep(DEBOUNCE_SECONDS)  # coalesce bursts of events into one pass
                wake.clear()
                async with self._limit:
                    outcome = await self.reconciler.reconcile(namespace, name)
                last = asyncio.get_running_loop().time()
                worker = self._workers.get(key)
                if worker is not None and outcome.status_resource_version:
                    worker.written_rv = outcome.status_resource_version
                if outcome.result == "gone" or (outcome.requeue_after is None and outcome.phase is None):
                    break
                delay = self.settings.resync_seconds
                if outcome.requeue_after is not None:
                    delay = max(0.5, min(delay, outcome.requeue_after))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=delay)
                # Rate limit: events in a burst (pods, workloads, our own writes) coalesce into one pass.
                spacing = self.settings.min_reconcile_interval - (asyncio.get_running_loop().time() - last)
                if spacing > 0:
                    await asyncio.sleep(spacing)
                wake.set()
        finally:
            current = self._workers.get(key)
            if current is not None and current.task is asyncio.current_task():
                del self._workers[key]


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """Kopf computes a deep-copied "essence" of every watched object on every event to diff it for
    change handlers. This operator registers no change handlers (only event handlers and its own
    workers), so the essence is never used: skip it (it was the largest CPU cost per event)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        """An empty essence."""
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """Nothing is stored."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Nothing is stored."""


@dataclasses.dataclass
class Runtime:
    """What the handlers share (kept in Kopf's memo)."""

    settings: Settings
    api: KubeApi
    metrics: OperatorMetrics
    reconciler: Reconciler
    workers: JobWorkers


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Configure Kopf and build the reconciler."""
    ours: Settings = memo.get("settings") or Settings.from_env()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.WARNING  # explicit events only, plus warnings/errors
    settings.watching.server_timeout = int(ours.watch_server_timeout)  # the API wants an integer
    settings.watching.client_timeout = ours.watch_server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = ours.request_timeout * 2
    # Server-side filtering: only our children are watched, never every pod of the cluster.
    children = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    settings.watching.label_selectors["pods"] = f"{children},{LABEL_COMPONENT}={COMPONENT_TRAINER}"
    settings.watching.label_selectors["apps", "deployments"] = children
    settings.watching.label_selectors["apps", "statefulsets"] = children
    settings.watching.label_selectors["batch", "jobs"] = children
    settings.watching.label_selectors["v1", "configmaps"] = children
    settings.watching.label_selectors["v1", "services"] = children
    settings.watching.label_selectors["rbac.authorization.k8s.io", "roles"] = children
    settings.watching.label_selectors["rbac.authorization.k8s.io", "rolebindings"] = children
    settings.peering.standalone = ours.peering is None
    if ours.peering is not None:
        settings.peering.name = ours.peering
    api = KubeApi(load_configuration(), max_workers=ours.api_workers, request_timeout=ours.request_timeout)
    metrics: OperatorMetrics = memo.get("metrics") or OperatorMetrics()
    if ours.metrics_port and not memo.get("metrics_served"):
        metrics.serve(ours.metrics_port)
        memo.metrics_served = True
    reconciler = Reconciler(api, ours, metrics, KopfEventSink())
    memo.runtime = Runtime(ours, api, metrics, reconciler, JobWorkers(reconciler, ours))
    log.info(
        "dspark-operator started (%s; resync %.0fs)",
        f"namespaces {', '.join(ours.namespaces)}" if ours.namespaces else "all namespaces",
        ours.resync_seconds,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the workers and close connections."""
    runtime = memo.get("runtime")
    if runtime is not None:
        await runtime.workers.close()
        runtime.api.close()


@kopf.on.probe(id="jobs")
async def probe_jobs(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: number of job workers."""
    runtime = memo.get("runtime")
    return len(runtime.workers) if runtime is not None else 0


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Any change of a job (or the initial listing on start): wake its worker."""
    runtime = _runtime(memo)
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not namespace or not name:
        return
    if type == "DELETED":
        runtime.workers.forget(namespace, name)
        runtime.metrics.set_phase(str(meta.get("uid", "")), None)
        return
    runtime.workers.touch(namespace, name, meta.get("resourceVersion"))


def _wake_owner_job(body: kopf.Body, memo: kopf.Memo) -> None:
    meta = body.get("metadata") or {}
    job = (meta.get("labels") or {}).get(LABEL_JOB_NAME)
    namespace = meta.get("namespace")
    if job and namespace:
        _runtime(memo).workers.touch(namespace, job)


@kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_TRAINER})
async def trainer_pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A trainer pod changed (started, failed, restarted, deleted): check its job now."""
    _wake_owner_job(body, memo)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def deployment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Mooncake or inference readiness changed: check the job now."""
    _wake_owner_job(body, memo)


@kopf.on.event("apps", "v1", "statefulsets", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def statefulset_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Trainer StatefulSet changed: check the job now."""
    _wake_owner_job(body, memo)


@kopf.on.event("", "v1", "configmaps", labels={LABEL_MANAGED_BY: MANAGED_BY})
@kopf.on.event("", "v1", "services", labels={LABEL_MANAGED_BY: MANAGED_BY})
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels={LABEL_MANAGED_BY: MANAGED_BY})
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def config_child_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The job's ConfigMap, a Service, the trainer's Role or RoleBinding changed (a hand edit is taken back)."""
    _wake_owner_job(body, memo)


async def batch_job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The data-regeneration Job changed (started, a pod failed, Complete, Failed): check the job now."""
    _wake_owner_job(body, memo)


def register_batch_job_watch() -> None:
    """Watch the operator's batch Jobs (data regeneration). Registered only when the operator may list and watch
    them (see :func:`batch_jobs_watchable`): Kopf stops the whole operator when a watch keeps failing with 403, and
    the Helm chart can leave batch permissions out (``rbac.batchJobs=false``)."""
    kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})(batch_job_event)


def batch_jobs_watchable(namespaces: tuple[str, ...], authorization: Any = None) -> bool:
    """Whether the operator's credentials allow list + watch of batch Jobs (cluster-wide, or in every namespace).

    Asks the API server with SelfSubjectAccessReviews (allowed for every authenticated user); when it cannot be
    asked (no answer), assume yes. ``authorization``: a ``kubernetes.client.AuthorizationV1Api`` (tests pass a fake).
    """
    if authorization is None:
        try:
            from kubernetes import client as k8s_client

            authorization = k8s_client.AuthorizationV1Api(k8s_client.ApiClient(load_configuration()))
        except Exception:
            log.warning("cannot check the batch Job permissions; watching batch Jobs", exc_info=True)
            return True
    for namespace in namespaces or (None,):
        for verb in ("list", "watch"):
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "group": "batch",
                        "resource": "jobs",
                        "verb": verb,
                        **({"namespace": namespace} if namespace else {}),
                    }
                },
            }
            try:
                answer = authorization.create_self_subject_access_review(review)
            except Exception:
                log.warning("cannot check the batch Job permissions; watching batch Jobs", exc_info=True)
                return True
            status = answer.get("status") if isinstance(answer, dict) else getattr(answer, "status", None)
            allowed = status.get("allowed") if isinstance(status, dict) else getattr(status, "allowed", None)
            if not allowed:
                log.warning(
                    "no permission to %s batch Jobs%s: not watching them; jobs with dataset.regenerate cannot run "
                    "(Helm chart: rbac.batchJobs=true)",
                    verb,
                    f" in namespace {namespace}" if namespace else "",
                )
                return False
    return True
