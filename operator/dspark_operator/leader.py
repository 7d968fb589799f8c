"""Leader election for several operator replicas: one `coordination.k8s.io/v1` Lease, one holder.

Only the holder runs the Kopf operator (watches, handlers, per-job workers); the others stand by,
answering their liveness probe, until the lease expires or is released. A holder that cannot renew
before its lease runs out stops reconciling and exits non-zero, so the kubelet restarts it as a
standby: two replicas never reconcile at once for longer than the renew deadline.

Kopf's own peering is not used for this: it pauses Kopf's watchers but not the operator's per-job
workers, and replicas of one Deployment share a priority, which freezes them all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder."""

    holder: str | None
    renewed_at: dt.datetime | None
    duration_seconds: int
    transitions: int = 0


def may_hold(record: LeaseRecord | None, me: str, now: dt.datetime) -> bool:
    """Whether ``me`` may take or renew the lease: it is absent, free, ours, or not renewed in time."""
    if record is None or not record.holder or record.holder == me or record.renewed_at is None:
        return True
    return now - record.renewed_at > dt.timedelta(seconds=record.duration_seconds)


def claimed(record: LeaseRecord | None, me: str, now: dt.datetime, duration_seconds: int) -> LeaseRecord:
    """The lease after ``me`` takes or renews it (a change of holder counts one transition)."""
    transitions = record.transitions if record is not None else 0
    if record is None or record.holder != me:
        transitions += 1
    return LeaseRecord(me, now, duration_seconds, transitions)


def default_identity() -> str:
    """This replica's name in the lease: the pod name (or host name) and the process id."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holder_identity,
        renewed_at=spec.renew_time or spec.acquire_time,
        duration_seconds=int(spec.lease_duration_seconds or 15),
        transitions=int(spec.lease_transitions or 0),
    )


class LeaderElector:
    """Takes, renews and releases one Lease through the API server (optimistic concurrency on resourceVersion)."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        namespace: str,
        name: str,
        *,
        identity: str | None = None,
        duration_seconds: int = 15,
    ) -> None:
        self.api = k8s_client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.duration_seconds = duration_seconds
        self.retry_seconds = max(1.0, duration_seconds / 5)
        self.holder: str | None = None  # the last holder seen

    def try_hold(self) -> bool:
        """One attempt to take or renew the lease; True when this replica holds it afterwards."""
        now = dt.datetime.now(dt.UTC)
        lease: Any
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            lease = None
        record = _record(lease) if lease is not None else None
        self.holder = record.holder if record is not None else None
        if not may_hold(record, self.identity, now):
            return False
        new = claimed(record, self.identity, now, self.duration_seconds)
        spec = k8s_client.V1LeaseSpec(
            holder_identity=new.holder,
            lease_duration_seconds=new.duration_seconds,
            renew_time=now,
            acquire_time=lease.spec.acquire_time if record is not None and record.holder == self.identity else now,
            lease_transitions=new.transitions,
        )
        try:
            if lease is None:
                body = k8s_client.V1Lease(metadata=k8s_client.V1ObjectMeta(name=self.name), spec=spec)
                self.api.create_namespaced_lease(self.namespace, body)
            else:
                lease.spec = spec  # metadata keeps the resourceVersion read above: a concurrent writer wins
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            if e.status in (409, 422):  # someone else wrote it first
                return False
            raise
        self.holder = self.identity
        return True

    def wait_until_leader(self, stop: threading.Event | None = None) -> bool:
        """Block until this replica holds the lease (False when ``stop`` is set first)."""
        stop = stop or threading.Event()
        announced: str | None = None
        while not stop.is_set():
            try:
                if self.try_hold():
                    log.info("leader election: this replica (%s) holds lease %s/%s", self.identity,
                             self.namespace, self.name)
                    return True
            except ApiException as e:
                log.warning("leader election: lease %s/%s: %s %s", self.namespace, self.name, e.status, e.reason)
            if self.holder != announced:
                log.info("leader election: standing by; lease %s/%s is held by %s", self.namespace, self.name,
                         self.holder)
                announced = self.holder
            stop.wait(self.retry_seconds)
        return False

    def keep_renewing(self, on_lost: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Renew in a daemon thread every fifth of the lease; call ``on_lost`` once the lease is not renewed
        within two thirds of its duration (so the holder stops well before another replica may take over)."""

        def run() -> None:
            deadline_s = self.duration_seconds * 2 / 3
            last = dt.datetime.now(dt.UTC)
            while not stop.wait(self.retry_seconds):
                try:
                    if self.try_hold():
                        last = dt.datetime.now(dt.UTC)
                        continue
                    log.error("leader election: lease %s/%s was taken by %s", self.namespace, self.name, self.holder)
                except Exception as e:  # an unreachable API server: keep trying until the deadline
                    log.warning("leader election: renewing lease %s/%s failed: %s", self.namespace, self.name, e)
                    if (dt.datetime.now(dt.UTC) - last).total_seconds() < deadline_s:
                        continue
                on_lost()
                return

        thread = threading.Thread(target=run, name="dspark-lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the lease up at a clean exit, so a standby takes over at once."""
        try:
            lease: Any = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.renew_time = None
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("leader election: released lease %s/%s", self.namespace, self.name)
        except ApiException as e:
            log.warning("leader election: releasing lease %s/%s failed: %s %s", self.namespace, self.name,
                        e.status, e.reason)


class StandbyHealth:
    """A /healthz endpoint for a standby replica (Kopf serves it once this replica leads)."""

    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"standby\n"
                self.send_response(200 if self.path.startswith("/healthz") else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((addr, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="dspark-standby-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
