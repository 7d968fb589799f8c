"""The reference capture server: an aiohttp app in front of a CaptureEngine and a Mooncake transport.

HTTP contract (version 1; docs/capture.md has the full text):

``POST /capture`` (alias ``/dspark/capture``), JSON body::

    {"request_id": "rank0-17", "input_ids": [151644, 872, ...], "sample_id": "data.jsonl:12"}

``request_id`` (required): 1-128 characters of ``A-Z a-z 0-9 . _ : -``; the client keeps it across
retries of one sample. ``sample_id`` (optional) is echoed. The answer (200)::

    {"request_id": ..., "sample_id": ..., "key": "dspark/<minute>/<request_id>/<nonce>",
     "records": {"hidden":      {"key": ".../hidden",      "shape": [T, L*H], "dtype": "bfloat16", "nbytes": N},
                 "last_hidden": {"key": ".../last_hidden", "shape": [T, H],   "dtype": "bfloat16", "nbytes": M}},
     "num_tokens": T, "layer_ids": [...], "hidden_size": H, "timings": {...}}

Errors: 400 (malformed JSON, missing/invalid field; the message names it), 429 + Retry-After
(queue full), 503 + Retry-After (Mooncake store unreachable or full), 500. Error bodies are
``{"error": "<message>", "reason": "<label>"}``. ``GET /health`` (process alive),
``GET /health_generate`` (a 1-token forward through the queue and a store ping), ``GET /metrics``,
``GET /info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dspark_trainer.capture.engine import CaptureEngine
from dspark_trainer.capture.metrics import CaptureMetrics
from dspark_trainer.transport.errors import StoreFullError, StoreUnavailableError, TransportError
from dspark_trainer.transport.janitor import RecordJanitor
from dspark_trainer.transport.mooncake_client import MooncakeTransport, TensorParts
from dspark_trainer.transport.record import RecordInfo, make_base_key, validate_request_id

log = logging.getLogger(__name__)

CONTRACT_VERSION = 1
REQUEST_FIELDS = frozenset({"request_id", "input_ids", "sample_id"})


@dataclass
class ServerSettings:
    """Knobs of the reference capture server."""

    host: str = "127.0.0.1"
    port: int = 0
    max_queue: int = 64  # requests accepted and not answered yet; more get 429
    max_batch_size: int = 8
    max_batch_tokens: int = 32768
    batch_window_ms: float = 5.0
    retry_after_seconds: int = 1
    health_timeout_seconds: float = 30.0
    janitor: bool = True


class CaptureFailure(Exception):
    """A request that failed with an HTTP status and a metrics reason."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class _Job:
    kind: str  # "capture" | "health"
    input_ids: list[int]
    request_id: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[dict[str, Any]]
    accepted: float = field(default_factory=time.perf_counter)


def _error(status: int, reason: str, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": message, "reason": reason}, status=status, headers=headers)


class CaptureServer:
    """The HTTP front, a bounded queue, and one worker thread that batches forwards and writes records."""

    def __init__(
        self,
        engine: CaptureEngine,
        transport: MooncakeTransport,
        settings: ServerSettings | None = None,
        metrics: CaptureMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.settings = settings or ServerSettings()
        self.metrics = metrics or CaptureMetrics()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._janitor: RecordJanitor | None = None
        self.port: int | None = None
        self.app = self._build_app()
        self.transport.on_retry = lambda reason, _code: self.metrics.store_retries.labels(reason=reason).inc()

    # ------------------------------------------------------------------ app
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/capture", self.handle_capture)
        app.router.add_post("/dspark/capture", self.handle_capture)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/health_generate", self.handle_health_generate)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/info", self.handle_info)
        return app

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the capture server is not started")
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Connect the transport, start the worker and the janitor, and listen."""
        if not self.transport.connected:
            await asyncio.get_running_loop().run_in_executor(None, self.transport.connect)
        self._worker = threading.Thread(target=self._work, name="dspark-capture-worker", daemon=True)
        self._worker.start()
        if self.settings.janitor:
            cfg = self.transport.config
            self._janitor = RecordJanitor(self.transport, cfg.key_ttl_seconds, cfg.janitor_interval_seconds).start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.settings.port
        log.info("capture server listening on %s (model %s, layers %s)", self.url, self.engine.model_path,
                 self.engine.layer_ids)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._queue.put(None)
        if self._worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._worker.join, 30)
            self._worker = None
        if self._janitor is not None:
            self._janitor.stop()
            self._janitor = None

    # ------------------------------------------------------------------ handlers
    async def handle_health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def handle_info(self, _request: web.Request) -> web.Response:
        info = self.engine.info()
        info.update(
            contract_version=CONTRACT_VERSION,
            server="dspark-reference",
            record_fields=["hidden", "last_hidden"],
            master_address=self.transport.config.master_address,
            max_queue=self.settings.max_queue,
        )
        return web.json_response(info)

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_health_generate(self, _request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        try:
            job = self._submit("health", [0], "health", loop)
        except CaptureFailure as exc:
            return _error(503, exc.reason, f"unhealthy: {exc}", exc.retry_after)
        try:
            result = await asyncio.wait_for(asyncio.shield(job.future), self.settings.health_timeout_seconds)
        except TimeoutError:
            limit = self.settings.health_timeout_seconds
            return _error(503, "timeout", f"unhealthy: the forward pass took over {limit:g}s")
        except Exception as exc:
            return _error(503, "internal", f"unhealthy: {exc}")
        store_ok = await loop.run_in_executor(None, self.transport.ping)
        if not store_ok:
            return _error(503, "store_unavailable", f"unhealthy: the Mooncake master at "
                          f"{self.transport.config.master_address} does not answer", self.settings.retry_after_seconds)
        return web.json_response({"status": "ok", **result})

    def _parse(self, body: bytes) -> tuple[str, list[int], str | None]:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CaptureFailure(400, "bad_request", f"malformed JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise CaptureFailure(400, "bad_request", f"the body must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - REQUEST_FIELDS)
        if unknown:
            raise CaptureFailure(400, "bad_request", f"unknown field(s) {unknown}; allowed: {sorted(REQUEST_FIELDS)}")
        if "request_id" not in data:
            raise CaptureFailure(400, "bad_request", "missing field `request_id`")
        try:
            request_id = validate_request_id(data["request_id"])
        except ValueError as exc:
            raise CaptureFailure(400, "bad_request", str(exc)) from None
        if "input_ids" not in data:
            raise CaptureFailure(400, "bad_request", "missing field `input_ids`")
        problem = self.engine.validate(data["input_ids"])
        if problem:
            raise CaptureFailure(400, "bad_request", problem)
        sample_id = data.get("sample_id")
        if sample_id is not None and (not isinstance(sample_id, str) or len(sample_id) > 512):
            raise CaptureFailure(400, "bad_request", "sample_id must be a string of at most 512 characters")
        return request_id, data["input_ids"], sample_id

    def _submit(self, kind: str, input_ids: list[int], request_id: str, loop: asyncio.AbstractEventLoop) -> _Job:
        with self._pending_lock:
            if self._pending >= self.settings.max_queue:
                raise CaptureFailure(
                    429, "queue_full",
                    f"capture queue full ({self._pending} requests pending, limit {self.settings.max_queue}); "
                    "retry later",
                    self.settings.retry_after_seconds,
                )
            self._pending += 1
            self.metrics.queue_depth.set(self._pending)
        job = _Job(kind, input_ids, request_id, loop, loop.create_future())
        if kind == "health":
            job.future.add_done_callback(lambda _f: self._done())
        self._queue.put(job)
        return job

    def _done(self) -> None:
        with self._pending_lock:
            self._pending -= 1
            self.metrics.queue_depth.set(self._pending)

    async def handle_capture(self, request: web.Request) -> web.Response:
        self.metrics.requests.inc()
        t0 = time.perf_counter()
        try:
            body = await request.read()
            request_id, input_ids, sample_id = self._parse(body)
            job = self._submit("capture", input_ids, request_id, asyncio.get_running_loop())
            try:
                result = await job.future
            finally:
                self._done()
        except CaptureFailure as exc:
            self.metrics.failures.labels(reason=exc.reason).inc()
            if exc.status >= 500:
                log.warning("capture request failed (%s): %s", exc.reason, exc)
            return _error(exc.status, exc.reason, str(exc), exc.retry_after)
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("capture request failed")
            self.metrics.failures.labels(reason="internal").inc()
            return _error(500, "internal", f"internal error: {type(exc).__name__}: {exc}")
        self.metrics.request_seconds.observe(time.perf_counter() - t0)
        result = dict(result)
        result["sample_id"] = sample_id
        return web.json_response(result)

    # ------------------------------------------------------------------ worker
    def _collect(self, first: _Job) -> list[_Job]:
        s = self.settings
        batch = [first]
        tokens = len(first.input_ids)
        deadline = time.monotonic() + s.batch_window_ms / 1000.0
        while len(batch) < s.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=max(remaining, 0.0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            if tokens + len(job.input_ids) > s.max_batch_tokens:
                self._queue.put(job)  # next batch (order among concurrent requests does not matter)
                break
            batch.append(job)
            tokens += len(job.input_ids)
        return batch

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            try:
                self._run_batch(batch)
            except Exception as exc:  # pragma: no cover - _run_batch answers every job itself
                log.exception("capture batch failed")
                for job in batch:
                    self._resolve(job, error=CaptureFailure(500, "internal", f"internal error: {exc}"))

    @staticmethod
    def _resolve(job: _Job, result: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result or {})

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            job.loop.call_soon_threadsafe(settle)

    def _run_batch(self, batch: list[_Job]) -> None:
        self.metrics.batch_size.observe(len(batch))
        t0 = time.perf_counter()
        try:
            states = self.engine.capture([job.input_ids for job in batch])
        except Exception as exc:
            log.exception("forward pass failed")
            for job in batch:
                self._resolve(job, error=CaptureFailure(500, "internal", f"forward pass failed: {exc}"))
            return
        forward_s = time.perf_counter() - t0
        self.metrics.forward_seconds.observe(forward_s)
        captures = [(job, st) for job, st in zip(batch, states, strict=True) if job.kind == "capture"]
        for job, st in zip(batch, states, strict=True):
            if job.kind == "health":
                self._resolve(job, {"forward_seconds": forward_s, "num_tokens": st.num_tokens})
        if not captures:
            return
        records: list[tuple[str, dict[str, TensorParts]]] = [
            (make_base_key(job.request_id), {"hidden": st.hidden_parts, "last_hidden": st.last_hidden})
            for job, st in captures
        ]
        failure: CaptureFailure | None = None
        try:
            results = self.transport.put_records(records)
        except StoreUnavailableError as exc:
            failure = CaptureFailure(503, exc.reason, str(exc), self.settings.retry_after_seconds)
        except StoreFullError as exc:
            failure = CaptureFailure(503, exc.reason, str(exc), self.settings.retry_after_seconds)
        except TransportError as exc:
            failure = CaptureFailure(503, exc.reason, str(exc), self.settings.retry_after_seconds)
        if failure is not None:
            for job, _ in captures:
                self._resolve(job, error=failure)
            return
        put_s = results[0].seconds if results else 0.0
        self.metrics.put_seconds.observe(put_s)
        for (job, st), res in zip(captures, results, strict=True):
            info: RecordInfo = res.info
            self.metrics.records.inc()
            self.metrics.tokens.inc(st.num_tokens)
            self.metrics.bytes.inc(info.nbytes)
            answer = info.to_json()
            answer.update(
                request_id=job.request_id,
                num_tokens=st.num_tokens,
                layer_ids=self.engine.layer_ids,
                hidden_size=self.engine.hidden_size,
                timings={
                    "queue_seconds": t0 - job.accepted,
                    "forward_seconds": forward_s,
                    "put_seconds": put_s,
                    "batch_size": len(batch),
                },
            )
            self._resolve(job, answer)


class ServerHandle:
    """A capture server running on its own event loop in a background thread (tests, embedded demo)."""

    def __init__(self, server: CaptureServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.server = server
        self.loop = loop
        self.thread = thread

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, close_transport: bool = True) -> None:
        if not self.loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=60)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if close_transport:
            self.server.transport.close()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_capture_server(
    engine: CaptureEngine,
    transport: MooncakeTransport,
    settings: ServerSettings | None = None,
    metrics: CaptureMetrics | None = None,
) -> ServerHandle:
    """Start a CaptureServer in a background thread and return once it listens."""
    server = CaptureServer(engine, transport, settings, metrics)
    loop = asyncio.new_event_loop()
    started: queue.Queue[BaseException | None] = queue.Queue()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            started.put(exc)
            loop.close()
            return
        started.put(None)
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="dspark-capture-server", daemon=True)
    thread.start()
    err = started.get()
    if err is not None:
        raise err
    return ServerHandle(server, loop, thread)


async def serve_forever(server: CaptureServer, stop: Callable[[], asyncio.Future[None]] | None = None) -> None:
    """Run until cancelled (the CLI) or until `stop()` resolves."""
    await server.start()
    try:
        if stop is not None:
            await stop()
        else:
            await asyncio.Event().wait()
    finally:
        await server.stop()
