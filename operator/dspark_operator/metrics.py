"""Prometheus metrics of the operator (own registry, so tests can run several operators in one process)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from dspark_operator.api.status import Phase

RESULTS = ("ok", "invalid", "failed", "error", "gone")


class OperatorMetrics:
    """dspark_operator_jobs{phase}, dspark_operator_job_info{dspark_namespace,dspark_job,phase} (1 per existing
    job; a deleted job's series goes with it, so the cardinality is the number of jobs),
    dspark_operator_reconcile_total{result},
    dspark_operator_reconcile_seconds, dspark_operator_gang_restarts_total and its per-job
    dspark_operator_job_gang_restarts_total{dspark_namespace,dspark_job}, dspark_operator_leader, plus process_*
    (resident memory, CPU)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.jobs = Gauge("dspark_operator_jobs", "DSparkTrainingJobs by phase.", ["phase"], registry=self.registry)
        self.reconcile_total = Counter(
            "dspark_operator_reconcile", "Reconciliations by result.", ["result"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "dspark_operator_reconcile_seconds",
            "Duration of one reconciliation of one job.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.gang_restarts = Counter(
            "dspark_operator_gang_restarts",
            "Gang restarts of trainer pods started by the operator.",
            registry=self.registry,
        )
        self.job_info = Gauge(
            "dspark_operator_job_info", "1 for each DSparkTrainingJob, labelled with its phase.",
            ["dspark_namespace", "dspark_job", "phase"], registry=self.registry,
        )
        self.job_gang_restarts = Counter(
            "dspark_operator_job_gang_restarts",
            "Gang restarts of one job's trainer pods.",
            ["dspark_namespace", "dspark_job"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "dspark_operator_leader", "1 while this replica reconciles, 0 while it stands by (leader election).",
            registry=self.registry,
        )
        self.leader.set(1)
        self._phases: dict[str, str] = {}
        self._jobs: dict[str, tuple[str, str, str]] = {}  # uid -> (namespace, job, phase) as exported
        self._lock = threading.Lock()
        for phase in Phase:
            self.jobs.labels(phase=phase.value).set(0)
        for result in RESULTS:
            self.reconcile_total.labels(result=result)

    # Label names: `namespace` and `job` are the scrape target's own labels in Prometheus.
    def set_phase(self, uid: str, phase: str | None, *, namespace: str = "", name: str = "") -> None:
        """Record the current phase of a job (None: forget the job and its per-job series)."""
        with self._lock:
            old = self._jobs.pop(uid, None)
            if old is not None and (phase is None or old != (namespace, name, phase)):
                with contextlib.suppress(KeyError):
                    self.job_info.remove(*old)
            if phase is None:
                self._phases.pop(uid, None)
                if old is not None:
                    with contextlib.suppress(KeyError):
                        self.job_gang_restarts.remove(old[0], old[1])
            else:
                self._phases[uid] = phase
                if name:
                    self._jobs[uid] = (namespace, name, phase)
                    self.job_info.labels(dspark_namespace=namespace, dspark_job=name, phase=phase).set(1)
            counts = {p.value: 0 for p in Phase}
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
            for name, count in counts.items():
                self.jobs.labels(phase=name).set(count)

    def gang_restart(self, namespace: str, name: str) -> None:
        """Count one gang restart of a job."""
        self.gang_restarts.inc()
        self.job_gang_restarts.labels(dspark_namespace=namespace, dspark_job=name).inc()

    @contextmanager
    def time_reconcile(self) -> Iterator[None]:
        """Observe the duration of a reconciliation."""
        with self.reconcile_seconds.time():
            yield

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)
