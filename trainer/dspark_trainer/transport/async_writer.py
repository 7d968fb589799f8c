"""A bounded asynchronous record writer: the caller hands a record over and returns at once; one worker
thread writes queued records to Mooncake in batches.

The SGLang capture hook runs inside SGLang's scheduler loop, where a synchronous Mooncake write (a
staging copy and a network transfer, tens of milliseconds for a 100 MB record) would delay the next
forward pass. ``AsyncRecordWriter.submit`` only describes the record and queues it.

The queue is bounded by records and by bytes (the queued tensors stay alive until written). When it is
full, ``submit`` waits up to ``block_seconds`` for room: back-pressure that slows the caller exactly as
much as the store is behind. If there is still no room it raises ``WriterFullError`` (reason
``writer_full``): the request fails visibly and is counted; nothing is ever dropped silently. A record
bigger than ``max_bytes`` is admitted when the queue is empty, so one large record never deadlocks.

Each submitted record gets a ``PendingWrite`` (its ``RecordInfo`` is known before the write) that
completes with the put's result or its error; ``on_done`` callbacks feed metrics.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dspark_trainer.transport.errors import TransportError
from dspark_trainer.transport.mooncake_client import PutResult, TensorParts, describe_record
from dspark_trainer.transport.record import RecordInfo

log = logging.getLogger(__name__)

PutFn = Callable[[Sequence[tuple[str, Mapping[str, TensorParts]]]], list[PutResult]]


class WriterFullError(TransportError):
    """The writer's queue stayed full for ``block_seconds``: the store does not keep up with the captures."""

    reason = "writer_full"


class WriterClosedError(TransportError):
    """The writer was closed before the record was written."""

    reason = "writer_closed"


class WriterInternalError(TransportError):
    """The put raised something other than a TransportError (a bug); the batch fails, the worker goes on."""

    reason = "internal"


@dataclass
class PendingWrite:
    """One queued record: ``info`` is what the write will produce; ``wait()`` blocks until it is written."""

    info: RecordInfo
    fields: Mapping[str, TensorParts] = field(repr=False)
    submitted: float = field(default_factory=time.perf_counter)
    result: PutResult | None = None
    error: TransportError | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def nbytes(self) -> int:
        return self.info.nbytes

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> PutResult:
        """The put's result; raises the write's TransportError, or TimeoutError when not done in ``timeout``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the write of {self.info.base} is not done after {timeout}s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def _finish(self, result: PutResult | None, error: TransportError | None) -> None:
        self.result, self.error = result, error
        self._done.set()


@dataclass
class WriterStats:
    """Counters of one writer (sum-only; ``queued_*`` are the current depth)."""

    submitted: int = 0
    written: int = 0
    failed: int = 0
    rejected: int = 0
    blocked: int = 0
    blocked_seconds: float = 0.0
    bytes_written: int = 0
    queued_records: int = 0
    queued_bytes: int = 0


DoneCallback = Callable[[PendingWrite], None]
WaitCallback = Callable[[float], None]


class AsyncRecordWriter:
    """A bounded queue of records and one worker thread that writes them with ``put`` (e.g.
    ``MooncakeTransport.put_records``), up to ``max_batch_records`` / ``max_batch_bytes`` per call."""

    def __init__(
        self,
        put: PutFn,
        *,
        max_records: int,
        max_bytes: int,
        block_seconds: float,
        max_batch_records: int = 8,
        max_batch_bytes: int = 256 << 20,
        on_done: DoneCallback | None = None,
        on_wait: WaitCallback | None = None,
        name: str = "record writer",
    ) -> None:
        if max_records < 1 or max_bytes < 1 or max_batch_records < 1 or block_seconds < 0:
            raise ValueError("max_records, max_bytes and max_batch_records must be >= 1, block_seconds >= 0")
        self._put = put
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.block_seconds = block_seconds
        self.max_batch_records = max_batch_records
        self.max_batch_bytes = max_batch_bytes
        self.on_done = on_done
        self.on_wait = on_wait
        self.name = name
        self.stats = WriterStats()
        self._queue: collections.deque[PendingWrite] = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    def submit(self, base: str, fields: Mapping[str, TensorParts]) -> PendingWrite:
        """Queue one record; returns at once unless the queue is full (then waits up to ``block_seconds``).

        Raises WriterFullError when there is still no room, WriterClosedError after ``close()``, and
        ValueError for fields that do not form a record. The tensors must not change until the write is done.
        """
        pending = PendingWrite(describe_record(base, fields), fields)
        t0 = time.perf_counter()
        waited = False
        with self._cond:
            deadline = t0 + self.block_seconds
            while not self._closed and not self._has_room(pending.nbytes):
                waited = True
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.stats.rejected += 1
                    raise WriterFullError(
                        f"{self.name}: {self.stats.queued_records} records ({self.stats.queued_bytes} bytes) wait "
                        f"to be written and no room came in {self.block_seconds:g}s (limits: {self.max_records} "
                        f"records, {self.max_bytes} bytes): the Mooncake store does not keep up"
                    )
                self._cond.wait(left)
            if self._closed:
                raise WriterClosedError(f"{self.name}: closed")
            self._queue.append(pending)
            self.stats.submitted += 1
            self.stats.queued_records += 1
            self.stats.queued_bytes += pending.nbytes
            if waited:
                self.stats.blocked += 1
                self.stats.blocked_seconds += time.perf_counter() - t0
            self._cond.notify_all()
        if waited and self.on_wait is not None:
            self.on_wait(time.perf_counter() - t0)
        return pending

    def _has_room(self, nbytes: int) -> bool:
        s = self.stats
        if s.queued_records == 0:
            return True
        return s.queued_records < self.max_records and s.queued_bytes + nbytes <= self.max_bytes

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is written or failed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._in_flight == 0, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then stop; records still queued fail with WriterClosedError."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for p in left:
            self._complete(p, None, WriterClosedError(f"{self.name}: closed before {p.info.base} was written"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _take_batch(self) -> list[PendingWrite] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed)
            if not self._queue:
                return None
            batch = [self._queue.popleft()]
            size = batch[0].nbytes
            while self._queue and len(batch) < self.max_batch_records \
                    and size + self._queue[0].nbytes <= self.max_batch_bytes:
                nxt = self._queue.popleft()
                batch.append(nxt)
                size += nxt.nbytes
            self._in_flight = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                results = self._put([(p.info.base, p.fields) for p in batch])
            except TransportError as exc:
                for p in batch:
                    self._complete(p, None, exc)
            except Exception as exc:  # a bug: keep the worker alive, fail the batch visibly
                log.exception("%s: writing %d records failed", self.name, len(batch))
                err = WriterInternalError(f"{self.name}: {type(exc).__name__}: {exc}")
                for p in batch:
                    self._complete(p, None, err)
            else:
                for p, res in zip(batch, results, strict=True):
                    self._complete(p, res, None)
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()

    def _complete(self, pending: PendingWrite, result: PutResult | None, error: TransportError | None) -> None:
        with self._cond:
            s = self.stats
            s.queued_records -= 1
            s.queued_bytes -= pending.nbytes
            if error is None:
                s.written += 1
                s.bytes_written += pending.nbytes
            else:
                s.failed += 1
            self._cond.notify_all()
        pending.fields = {}  # let the tensors go
        pending._finish(result, error)
        if error is not None:
            log.warning("%s: record %s not written (%s): %s", self.name, pending.info.base, error.reason, error)
        if self.on_done is not None:
            try:
                self.on_done(pending)
            except Exception:  # metrics must never break the writer
                log.exception("%s: on_done callback failed", self.name)
