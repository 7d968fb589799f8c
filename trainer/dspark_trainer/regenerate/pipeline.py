"""The Ray Data pipeline of ``dspark data regenerate``.

Shape: ``from_items(pending shard specs, one block per shard) -> map_batches(ShardWorker, actor pool)``; the driver
consumes the stream of finished shards (as they complete) and commits each atomically (``output.OutputDir``).

Concurrency is bounded per endpoint, cluster-wide: one ``EndpointGateway`` async actor per endpoint owns the HTTP
client of that endpoint and lets at most ``concurrency_per_endpoint`` requests in flight (an asyncio semaphore
inside the actor; more calls wait in the actor, never at the server). ``ShardWorker`` actors (``workers`` of them)
each regenerate one shard at a time, up to ``concurrency_per_endpoint * len(endpoints)`` samples concurrently
(asyncio), sending every request through a gateway; so a single worker can fill every endpoint, and a second one
keeps them busy while the first finishes the slow tail of its shard. Retries with back-off and fail-over to another
endpoint happen in the worker (``conversation.Regenerator``), so a back-off never holds a gateway slot.
All these actors are I/O bound and ask for 0 CPUs; the actor pool size bounds the workers."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import ray

from dspark_trainer.regenerate.conversation import Counters, Regenerator, regenerate_lines
from dspark_trainer.regenerate.driver import Log, RunState, finish, prepare
from dspark_trainer.regenerate.endpoints import ChatClient, ChatOutcome
from dspark_trainer.regenerate.options import RetryPolicy, RunOptions, SamplingParams
from dspark_trainer.regenerate.output import ShardResult
from dspark_trainer.regenerate.plan import ShardSpec, read_shard

RESULT_FIELDS = ("shard", "data", "rejects", "written", "rejected", "retried", "requests", "samples")


class EndpointGateway:
    """The only client of one endpoint in the cluster: at most ``concurrency`` requests in flight to it."""

    def __init__(self, endpoint: str, concurrency: int, timeout_s: float) -> None:
        self.client = ChatClient(endpoint, concurrency, timeout_s)

    async def chat(self, payload: dict[str, Any]) -> ChatOutcome:
        return await self.client.chat(payload)

    async def stats(self) -> dict[str, Any]:
        return self.client.stats()

    async def close(self) -> None:
        await self.client.close()


class ProgressTracker:
    """Per-sample progress reported by the workers (for the driver's progress bar)."""

    def __init__(self) -> None:
        self.written = 0
        self.rejected = 0
        self.retried = 0

    def add(self, ok: bool, retried: int) -> None:
        if ok:
            self.written += 1
        else:
            self.rejected += 1
        self.retried += retried

    def get(self) -> tuple[int, int, int]:
        return self.written, self.rejected, self.retried


# Ray actor classes (typed ``Any``: Ray's decorators are not visible to mypy).
GatewayActor: Any = ray.remote(num_cpus=0, max_restarts=-1)(EndpointGateway)
TrackerActor: Any = ray.remote(num_cpus=0)(ProgressTracker)


class ShardWorker:
    """``map_batches`` UDF (an actor): regenerates whole shards and returns them as rows for the driver."""

    def __init__(self, gateways: list[Any], progress: Any, endpoints: list[str], model: str,
                 sampling: SamplingParams, retry: RetryPolicy, reject_truncated: bool, max_in_flight: int) -> None:
        self.gateways = gateways
        self.progress = progress
        self.endpoints = endpoints
        self.model = model
        self.sampling = sampling
        self.retry = retry
        self.reject_truncated = reject_truncated
        self.max_in_flight = max_in_flight

    async def _send(self, ep: int, payload: dict[str, Any]) -> ChatOutcome:
        outcome: ChatOutcome = await self.gateways[ep].chat.remote(payload)
        return outcome

    async def process(self, spec: ShardSpec) -> ShardResult:
        lines = list(read_shard(spec))
        counters = Counters()
        regen = Regenerator(self._send, self.endpoints, self.model, self.sampling, self.retry,
                            reject_truncated=self.reject_truncated, counters=counters)
        reported = [0]

        def on_sample(ok: bool) -> None:
            self.progress.add.remote(ok, counters.retried - reported[0])
            reported[0] = counters.retried

        res = await regenerate_lines(lines, regen, self.max_in_flight, on_sample)
        return ShardResult(
            shard=spec.shard, data="".join(f"{r}\n" for r in res.data), rejects="".join(f"{r}\n" for r in res.rejects),
            written=len(res.data), rejected=len(res.rejects), retried=counters.retried, requests=counters.requests,
            samples=len(lines),
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in RESULT_FIELDS}
        for spec_json in batch["spec"]:
            result = asyncio.run(self.process(ShardSpec.from_json(str(spec_json))))
            for name in RESULT_FIELDS:
                out[name].append(getattr(result, name))
        return out


def _row_to_result(row: dict[str, Any]) -> ShardResult:
    return ShardResult(
        shard=int(row["shard"]), data=str(row["data"]), rejects=str(row["rejects"]), written=int(row["written"]),
        rejected=int(row["rejected"]), retried=int(row["retried"]), requests=int(row["requests"]),
        samples=int(row["samples"]),
    )


class ProgressBar:
    """A tqdm bar over samples, fed by polling the tracker actor from a thread."""

    def __init__(self, state: RunState, tracker: Any, enabled: bool) -> None:
        from tqdm import tqdm

        total = state.plan.num_samples
        self.base = state.done_samples
        self.bar = tqdm(total=total, initial=self.base, unit="sample", desc="regenerate", disable=not enabled,
                        dynamic_ncols=True)
        self.tracker = tracker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="regenerate-progress", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.update()

    def update(self) -> None:
        try:
            written, rejected, retried = ray.get(self.tracker.get.remote(), timeout=10)
        except Exception:  # progress is best effort
            return
        self.bar.n = self.base + written + rejected
        self.bar.set_postfix(rejected=rejected, retried=retried, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.update()
        self.bar.close()


def _quiet_ray_data_console() -> None:
    """Ray Data logs every execution at INFO on the console; keep its session log file, show only warnings."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger)

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.WARNING)


def init_ray(opts: RunOptions) -> bool:
    """Start local Ray (the machine's CPUs, or ``num_cpus``) or join ``ray_address``; True if we must shut down."""
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if opts.ray_address:
        ray.init(address=opts.ray_address, **common)
    else:
        ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count() or 1,
                 object_store_memory=opts.object_store_memory, **common)
    return True


def run_ray(opts: RunOptions, log: Log = print) -> dict[str, Any]:
    """Run the regeneration with Ray Data; returns the summary (also written to ``summary.json``)."""
    state = prepare(opts, log)
    try:
        if state.pending:
            _execute(state, opts)
        return finish(state, "ray", log)
    finally:
        state.close()


def _execute(state: RunState, opts: RunOptions) -> None:
    owns_ray = init_ray(opts)
    actors: list[Any] = []
    try:
        _quiet_ray_data_console()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        gateways: list[Any] = [
            GatewayActor.options(max_concurrency=max(1000, 4 * opts.concurrency_per_endpoint)).remote(
                ep, opts.concurrency_per_endpoint, opts.request_timeout_s)
            for ep in state.endpoints
        ]
        tracker = TrackerActor.remote()
        actors = [*gateways, tracker]
        items = [{"spec": spec.to_json()} for spec in state.pending]
        ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            ShardWorker,
            fn_constructor_kwargs={
                "gateways": gateways, "progress": tracker, "endpoints": state.endpoints, "model": state.model,
                "sampling": opts.sampling, "retry": opts.retry, "reject_truncated": opts.reject_truncated,
                "max_in_flight": opts.concurrency_per_endpoint * len(state.endpoints),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(opts.workers, len(items))),
            num_cpus=0,
        )
        bar = ProgressBar(state, tracker, opts.progress)
        try:
            for row in ds.iter_rows():
                state.commit(_row_to_result(row))
        finally:
            bar.close()
        state.endpoint_stats = ray.get([g.stats.remote() for g in gateways], timeout=30)
    finally:
        if owns_ray:
            ray.shutdown()
        else:
            for actor in actors:
                ray.kill(actor)
