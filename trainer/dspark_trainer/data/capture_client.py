"""The trainer-rank capture client: samples in, captured hidden states out, each exactly once, in order.

    client = CaptureClient(cfg.capture, cfg.transport)
    with client:
        for sample in client.stream(rank_stream):       # objects with uid, input_ids, loss_mask
            sid, input_ids, loss_mask, hidden, last_hidden = sample
            ...                                          # train on it
            sample.release()                             # hand the read buffer back
            metrics.data_wait_seconds.observe(sample.wait_seconds)

How it works. A background thread runs an asyncio loop. `stream()` keeps `capture.window`
samples in flight: each is sent to the capture server with the fewest requests in flight
(ties round robin), its record is read from Mooncake into a pooled (pinned on CUDA machines)
buffer and deleted from the store. Samples are yielded in the order they were submitted,
whatever order they finish in, so training stays deterministic.

Exactly once. Every submission gets a request id ``{client_id}-{n}`` that all its retries
keep, and each attempt writes under a fresh key (the server adds a nonce). Retried: HTTP 429
and 503 (honouring Retry-After), connection errors and timeouts, 5xx, a record that is not in
the store (lost with a restarted master), and an unreachable master while reading. A sample
is delivered once, from the attempt that succeeded; if it took more than one attempt, every
other record written for its request id is deleted (``remove_by_regex`` on the request id), and
anything written even later (a straggling attempt) expires through the TTL janitor. A sample
that still fails after `capture.maxRetries` retries stops the stream with CaptureError; 400
answers (a bad sample) stop it at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import torch

from dspark_trainer.config.training import CaptureClientConfig
from dspark_trainer.config.transport import TransportConfig
from dspark_trainer.transport.buffers import BufferPool
from dspark_trainer.transport.errors import (
    BufferPoolExhausted,
    RecordNotFoundError,
    StoreUnavailableError,
    TransportError,
    code_name,
)
from dspark_trainer.transport.mooncake_client import FetchedRecord, MooncakeTransport
from dspark_trainer.transport.record import RecordFormatError, RecordInfo, make_base_key
from dspark_trainer.transport.retry import Backoff

log = logging.getLogger(__name__)

SGLANG_META_KEY = "dspark_capture"


class CaptureError(RuntimeError):
    """A sample could not be captured (after retries, or because the request itself is wrong)."""


class _Retry(Exception):
    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class CapturedSample:
    """One sample with its captured hidden states. `hidden`/`last_hidden` are views into a pooled read
    buffer, valid until `release()`; `to()` / `materialize()` give tensors that own their memory."""

    index: int
    sample_id: str
    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    hidden: torch.Tensor
    last_hidden: torch.Tensor
    source: Any = None
    wait_seconds: float = 0.0
    fetch_seconds: float = 0.0
    nbytes: int = 0
    attempts: int = 1
    server: str = ""
    key: str = ""
    _record: FetchedRecord | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as (sample_id, input_ids, loss_mask, hidden, last_hidden)."""
        return iter((self.sample_id, self.input_ids, self.loss_mask, self.hidden, self.last_hidden))

    @property
    def released(self) -> bool:
        return self._record is None

    def release(self) -> None:
        """Give the read buffer back; the hidden tensors must not be used afterwards."""
        if self._record is not None:
            self._record.release()
            self._record = None

    def materialize(self) -> CapturedSample:
        """Copy the hidden states into memory of their own and release the buffer."""
        if self._record is not None:
            self.hidden = self.hidden.clone()
            self.last_hidden = self.last_hidden.clone()
            self.release()
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CapturedSample:
        """Move everything to `device` (from the pinned buffer on CUDA) and release the buffer."""
        dev = torch.device(device)
        self.input_ids = self.input_ids.to(dev)
        self.loss_mask = self.loss_mask.to(dev)
        if dev.type == "cpu":
            return self.materialize()
        self.hidden = self.hidden.to(dev, non_blocking=non_blocking)
        self.last_hidden = self.last_hidden.to(dev, non_blocking=non_blocking)
        if non_blocking:
            torch.cuda.current_stream(dev).synchronize()
        self.release()
        return self

    def __enter__(self) -> CapturedSample:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class ClientStats:
    """Counters of one client (the trainer exports them; tests assert on them)."""

    submitted: int = 0
    delivered: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    stale_keys_deleted: int = 0
    bytes_fetched: int = 0
    fetch_seconds_total: float = 0.0
    data_wait_seconds_total: float = 0.0


@dataclass
class _Endpoint:
    url: str
    inflight: int = 0
    cooldown_until: float = 0.0
    failures: int = 0


@dataclass
class _Result:
    info: RecordInfo
    record: FetchedRecord
    attempts: int
    server: str


def _sample_fields(sample: Any) -> tuple[str, list[int], list[int]]:
    if isinstance(sample, tuple | list) and len(sample) == 3:
        sid, ids, mask = sample
    else:
        sid = getattr(sample, "uid", None)
        if sid is None:
            sid = getattr(sample, "sample_id", None)
        ids = sample.input_ids
        mask = sample.loss_mask
    ids_list = [int(t) for t in ids]
    mask_list = [int(m) for m in mask]
    if len(ids_list) != len(mask_list):
        raise CaptureError(f"sample {sid}: input_ids has {len(ids_list)} tokens but loss_mask {len(mask_list)}")
    return str(sid), ids_list, mask_list


class CaptureClient:
    """Bounded-window, multi-server, exactly-once capture client of one trainer rank."""

    def __init__(
        self,
        config: CaptureClientConfig,
        transport: TransportConfig | MooncakeTransport,
        *,
        server_api: Literal["dspark", "sglang"] = "dspark",
        client_id: str | None = None,
        on_wait: Callable[[float], None] | None = None,
        on_fetch: Callable[[int, float], None] | None = None,
    ) -> None:
        if not config.endpoints:
            raise CaptureError("capture.endpoints is empty: give the URLs of the capture servers")
        self.config = config
        self.server_api = server_api
        self._own_transport = not isinstance(transport, MooncakeTransport)
        self.transport = (
            MooncakeTransport(transport, segment_size=0, name="capture-client")
            if isinstance(transport, TransportConfig)
            else transport
        )
        rank = os.environ.get("RANK", "0")
        self.client_id = client_id or f"r{rank}-{secrets.token_hex(4)}"
        self.on_wait = on_wait
        self.on_fetch = on_fetch
        self.stats = ClientStats()
        self._endpoints = [_Endpoint(url.rstrip("/")) for url in config.endpoints]
        self._rr = itertools.count()
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool: BufferPool | None = None
        self._leftovers: set[str] = set()
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CaptureClient:
        if self._loop is not None:
            return self
        if not self.transport.connected:
            self.transport.connect()
        master = self.transport.config.master_address
        self.transport.on_retry = lambda reason, code: self._note_error(
            reason, f"Mooncake master {master}: {reason} ({code_name(code)}); retrying"
        )
        self._pool = self.transport.new_buffer_pool(
            max_buffers=self.config.window + self.config.max_held_samples, name="capture read buffers"
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, self.config.window), thread_name_prefix="dspark-fetch"
        )
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="dspark-capture-client", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        self._session = self._call(self._make_session())
        return self

    async def _make_session(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_seconds)
        connector = aiohttp.TCPConnector(limit=max(8, 2 * self.config.window))
        return aiohttp.ClientSession(timeout=timeout, connector=connector)

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Clean up leftovers, stop the loop, close the transport (when this client made it)."""
        if self._loop is not None:
            if self._session is not None:
                self._call(self._session.close())
                self._session = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=30)
            self._loop = None
        self._clean_leftovers()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._own_transport:
            self.transport.close()

    def __enter__(self) -> CaptureClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API
    @property
    def buffer_pool(self) -> BufferPool:
        if self._pool is None:
            raise RuntimeError("the capture client is not started")
        return self._pool

    def stream(self, samples: Iterable[Any]) -> Iterator[CapturedSample]:
        """Capture every sample (objects with uid/input_ids/loss_mask, or (id, ids, mask) tuples) and yield
        CapturedSample in submission order, keeping `capture.window` requests in flight."""
        self.start()
        assert self._loop is not None
        window = self.config.window
        source = iter(samples)
        inflight: deque[tuple[int, str, str, list[int], list[int], Any, concurrent.futures.Future[_Result]]] = deque()
        exhausted = False

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and len(inflight) < window:
                try:
                    sample = next(source)
                except StopIteration:
                    exhausted = True
                    return
                sid, ids, mask = _sample_fields(sample)
                index = next(self._seq)
                request_id = f"{self.client_id}-{index}"
                assert self._loop is not None
                fut = asyncio.run_coroutine_threadsafe(self._capture(request_id, sid, ids), self._loop)
                inflight.append((index, request_id, sid, ids, mask, sample, fut))
                with self._stats_lock:
                    self.stats.submitted += 1

        try:
            refill()
            while inflight:
                index, request_id, sid, ids, mask, sample, fut = inflight[0]
                t0 = time.perf_counter()
                try:
                    result = fut.result()
                except CaptureError:
                    raise
                except BufferPoolExhausted as exc:
                    raise CaptureError(str(exc)) from exc
                wait = time.perf_counter() - t0
                inflight.popleft()
                refill()
                rec = result.record
                captured = CapturedSample(
                    index=index,
                    sample_id=sid,
                    input_ids=torch.tensor(ids, dtype=torch.long),
                    loss_mask=torch.tensor(mask, dtype=torch.long),
                    hidden=rec.tensors["hidden"],
                    last_hidden=rec.tensors["last_hidden"],
                    source=sample,
                    wait_seconds=wait,
                    fetch_seconds=rec.seconds,
                    nbytes=rec.nbytes,
                    attempts=result.attempts,
                    server=result.server,
                    key=result.info.base,
                    _record=rec,
                )
                with self._stats_lock:
                    self.stats.delivered += 1
                    self.stats.data_wait_seconds_total += wait
                if self.on_wait is not None:
                    self.on_wait(wait)
                yield captured
        finally:
            # The consumer stopped early or a sample failed: cancel what is in flight and clean up after it.
            for _index, request_id, *_rest, fut in inflight:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled() and fut.exception() is None:
                    fut.result().record.release()
                self._leftovers.add(request_id)
            if inflight:
                self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        if not self._leftovers or not self.transport.connected:
            return
        for request_id in sorted(self._leftovers):
            try:
                removed = self.transport.delete_request(request_id)
            except TransportError as exc:
                log.warning("capture client: could not delete leftovers of %s: %s", request_id, exc)
                continue
            self._leftovers.discard(request_id)
            with self._stats_lock:
                self.stats.stale_keys_deleted += removed

    # ------------------------------------------------------------------ one sample
    async def _pick(self) -> _Endpoint:
        while True:
            now = time.monotonic()
            ready = [e for e in self._endpoints if e.cooldown_until <= now]
            if ready:
                least = min(e.inflight for e in ready)
                candidates = [e for e in ready if e.inflight == least]
                return candidates[next(self._rr) % len(candidates)]
            await asyncio.sleep(max(0.01, min(e.cooldown_until for e in self._endpoints) - now))

    def _note_error(self, reason: str, message: str) -> None:
        with self._stats_lock:
            self.stats.errors[reason] += 1
            self.stats.last_errors.append(f"{reason}: {message}")

    async def _capture(self, request_id: str, sample_id: str, input_ids: list[int]) -> _Result:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.config.retry_initial_seconds, self.config.retry_max_seconds)
        attempt = 0
        while True:
            attempt += 1
            ep = await self._pick()
            ep.inflight += 1
            try:
                info = await self._request(ep, request_id, sample_id, input_ids)
                if info.sized and info.fields["last_hidden"].shape[0] != len(input_ids):
                    rows = info.fields["last_hidden"].shape[0]
                    raise CaptureError(
                        f"sample {sample_id}: the capture server at {ep.url} returned {rows} token rows for "
                        f"{len(input_ids)} input tokens (prefix caching or chunked prefill on the server?)"
                    )
                record = await loop.run_in_executor(self._executor, self._fetch, info)
                rows = record.tensors["last_hidden"].shape[0]
                if rows != len(input_ids):
                    record.release()
                    raise CaptureError(
                        f"sample {sample_id}: record {info.base} has {rows} token rows for {len(input_ids)} "
                        "input tokens"
                    )
                await loop.run_in_executor(self._executor, self._delete, request_id, info, attempt)
                ep.failures = 0
                return _Result(info, record, attempt, ep.url)
            except _Retry as exc:
                self._note_error(exc.reason, str(exc))
                ep.failures += 1
                if attempt > self.config.max_retries:
                    raise CaptureError(
                        f"sample {sample_id} (request {request_id}): gave up after {attempt} attempts; last error "
                        f"({exc.reason}): {exc}"
                    ) from None
                with self._stats_lock:
                    self.stats.retries += 1
                delay = backoff.next_delay()
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                    ep.cooldown_until = time.monotonic() + exc.retry_after
                elif exc.reason == "connection":
                    ep.cooldown_until = time.monotonic() + delay
                log.warning("capture %s (sample %s) attempt %d on %s failed (%s): %s; retrying in %.2fs",
                            request_id, sample_id, attempt, ep.url, exc.reason, exc, delay)
                await asyncio.sleep(delay)
            finally:
                ep.inflight -= 1

    def _fetch(self, info: RecordInfo) -> FetchedRecord:
        assert self._pool is not None
        t0 = time.perf_counter()
        try:
            (record,) = self.transport.get_records([info], self._pool)
        except RecordNotFoundError as exc:
            raise _Retry("record_lost", str(exc)) from None
        except StoreUnavailableError as exc:
            raise _Retry("store_unavailable", str(exc)) from None
        except RecordFormatError as exc:
            raise CaptureError(f"record {info.base} is malformed: {exc}") from exc
        seconds = time.perf_counter() - t0
        with self._stats_lock:
            self.stats.bytes_fetched += record.nbytes
            self.stats.fetch_seconds_total += seconds
        if self.on_fetch is not None:
            self.on_fetch(record.nbytes, seconds)
        return record

    def _delete(self, request_id: str, info: RecordInfo, attempt: int) -> None:
        """Delete the fetched record, and every other record of the request when it took retries."""
        try:
            self.transport.delete_records([info.base], fields=list(info.fields))
            if attempt > 1:
                removed = self.transport.delete_request(request_id)
                if removed:
                    log.info("capture %s: deleted %d stale keys of earlier attempts", request_id, removed)
                with self._stats_lock:
                    self.stats.stale_keys_deleted += removed
        except TransportError as exc:
            # The data is safely in our buffer: deliver it, and delete the keys later.
            log.warning("capture %s: could not delete its record yet (%s); will retry", request_id, exc)
            self._leftovers.add(request_id)

    async def _request(self, ep: _Endpoint, request_id: str, sample_id: str, input_ids: list[int]) -> RecordInfo:
        assert self._session is not None
        if self.server_api == "sglang":
            base = make_base_key(request_id)
            url = f"{ep.url}/generate"
            body: dict[str, Any] = {
                "input_ids": input_ids,
                "rid": base,
                "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                "return_hidden_states": True,
                "stream": False,
            }
        else:
            url = f"{ep.url}/capture"
            body = {"request_id": request_id, "input_ids": input_ids, "sample_id": sample_id}
        try:
            async with self._session.post(url, json=body) as resp:
                status = resp.status
                text = await resp.text()
                retry_after_header = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise _Retry("connection", f"{url}: {type(exc).__name__}: {exc}") from None
        retry_after: float | None = None
        if retry_after_header:
            with contextlib.suppress(ValueError):
                retry_after = float(retry_after_header)
        data: Any = None
        with contextlib.suppress(ValueError):
            data = json.loads(text)
        message = data.get("error") if isinstance(data, dict) and data.get("error") else text[:500]
        if status in (429, 503):
            reason = data.get("reason") if isinstance(data, dict) else None
            raise _Retry(str(reason or f"http_{status}"), f"{url} answered {status}: {message}", retry_after or 1.0)
        if status >= 500 or status in (408, 502, 504):
            raise _Retry(f"http_{status}", f"{url} answered {status}: {message}", retry_after)
        if status != 200:
            raise CaptureError(f"sample {sample_id}: {url} refused the request ({status}): {message}")
        if not isinstance(data, dict):
            raise _Retry("bad_answer", f"{url} answered 200 with a body that is not a JSON object: {text[:200]}")
        if self.server_api == "sglang":
            return self._sglang_info(url, data)
        try:
            return RecordInfo.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureError(f"{url} answered with a malformed record description: {exc}") from exc

    @staticmethod
    def _sglang_info(url: str, data: dict[str, Any]) -> RecordInfo:
        meta = data.get("meta_info") or {}
        values = meta.get(SGLANG_META_KEY)
        if not values:
            raise CaptureError(
                f"{url}: the answer has no meta_info.{SGLANG_META_KEY}: the SGLang server does not run the dspark "
                "capture plugin (start it with SGLANG_PLUGINS=dspark_capture, --enable-return-aux-hidden-states, "
                "--speculative-algorithm DSPARK, --return-aux-hidden-state-layer-ids ...; see docs/capture.md)"
            )
        info = values[-1] if isinstance(values, list) else values
        if not isinstance(info, dict):
            raise CaptureError(f"{url}: meta_info.{SGLANG_META_KEY} is not an object: {info!r}")
        if "error" in info:
            reason = str(info.get("reason", "store_error"))
            if reason in ("store_unavailable", "store_full", "store_error", "writer_full"):
                raise _Retry(reason, f"{url}: the plugin could not write the record: {info['error']}", 1.0)
            raise CaptureError(f"{url}: the SGLang capture plugin failed: {info['error']}")
        try:
            return RecordInfo.from_json(info)
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureError(f"{url}: malformed record description from the SGLang plugin: {exc}") from exc


def capture_all(client: CaptureClient, samples: Sequence[Any]) -> list[CapturedSample]:
    """Capture a finite list and return materialized samples (buffers released); for tests and tools."""
    return [s.materialize() for s in client.stream(samples)]
