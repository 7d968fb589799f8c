"""The key-TTL janitor: deletes records nobody fetched.

Mooncake 0.3.13 has no per-object expiry: a lease (``--default_kv_lease_ttl``) only protects an
object from removal for a while after a read, and eviction happens only under memory pressure
(and never to hard-pinned objects, which records are). So expiry is done here: keys carry the
Unix minute of their write (``dspark/{minute}/...``), and every ``janitorIntervalSeconds`` the
janitor removes, with one ``remove_by_regex`` per batch of minutes, every minute older than
``keyTtlSeconds`` that it has not cleaned yet. It runs in every capture server (and the SGLang
plugin); several janitors are harmless, each removal is idempotent. On start it also sweeps
`lookback_minutes` back, which catches records of capture servers that died.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from dspark_trainer.transport.errors import TransportError
from dspark_trainer.transport.mooncake_client import MooncakeTransport
from dspark_trainer.transport.record import minute_bucket

log = logging.getLogger(__name__)


class RecordJanitor:
    """Background thread that expires records older than `ttl_seconds`."""

    def __init__(
        self,
        transport: MooncakeTransport,
        ttl_seconds: float,
        interval_seconds: float,
        *,
        lookback_minutes: int = 24 * 60,
    ) -> None:
        self.transport = transport
        self.ttl_seconds = ttl_seconds
        self.interval_seconds = interval_seconds
        self.lookback_minutes = lookback_minutes
        self.removed_total = 0
        self._cleaned_through: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def expired_through(self, now: float | None = None) -> int:
        """The newest Unix minute whose records are all older than the TTL."""
        now = time.time() if now is None else now
        return minute_bucket(now) - math.ceil(self.ttl_seconds / 60.0) - 1

    def sweep(self, now: float | None = None) -> int:
        """Remove every expired minute not swept yet; returns the keys removed."""
        last = self.expired_through(now)
        first = last - self.lookback_minutes if self._cleaned_through is None else self._cleaned_through + 1
        if first > last:
            return 0
        removed = self.transport.delete_minutes(list(range(first, last + 1)))
        self._cleaned_through = last
        self.removed_total += removed
        if removed:
            log.info("janitor: removed %d expired record keys (minutes %d..%d)", removed, first, last)
        return removed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except TransportError as exc:
                log.warning("janitor: sweep failed, will retry: %s", exc)
            self._stop.wait(self.interval_seconds)

    def start(self) -> RecordJanitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dspark-janitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
