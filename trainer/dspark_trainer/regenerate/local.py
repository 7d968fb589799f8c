"""The same regeneration with plain asyncio in one process (no Ray): the baseline of the benchmark that measures
Ray's overhead, and a fallback for a single machine (``--engine asyncio``). Same plan, commits and summary;
``workers`` shards at a time; each endpoint's ``ChatClient`` bounds its requests in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from dspark_trainer.regenerate.conversation import Counters, Regenerator, regenerate_lines
from dspark_trainer.regenerate.driver import Log, RunState, finish, prepare
from dspark_trainer.regenerate.endpoints import ChatClient, ChatOutcome
from dspark_trainer.regenerate.options import RunOptions
from dspark_trainer.regenerate.output import ShardResult
from dspark_trainer.regenerate.plan import ShardSpec, read_shard


async def _run(state: RunState, progress: bool) -> None:
    from tqdm import tqdm

    opts = state.opts
    clients = [ChatClient(ep, opts.concurrency_per_endpoint, opts.request_timeout_s) for ep in state.endpoints]
    bar = tqdm(total=state.plan.num_samples, initial=state.done_samples, unit="sample", desc="regenerate",
               disable=not progress, dynamic_ncols=True)

    async def send(ep: int, payload: dict[str, Any]) -> ChatOutcome:
        return await clients[ep].chat(payload)

    async def shard(spec: ShardSpec) -> ShardResult:
        lines = list(read_shard(spec))
        counters = Counters()
        regen = Regenerator(send, state.endpoints, state.model, opts.sampling, opts.retry,
                            reject_truncated=opts.reject_truncated, counters=counters)
        res = await regenerate_lines(lines, regen, opts.concurrency_per_endpoint * len(clients),
                                     lambda ok: bar.update(1))
        return ShardResult(
            shard=spec.shard, data="".join(f"{r}\n" for r in res.data), rejects="".join(f"{r}\n" for r in res.rejects),
            written=len(res.data), rejected=len(res.rejects), retried=counters.retried, requests=counters.requests,
            samples=len(lines),
        )

    queue = list(state.pending)
    running: set[asyncio.Task[ShardResult]] = set()
    try:
        while queue or running:
            while queue and len(running) < opts.workers:
                running.add(asyncio.create_task(shard(queue.pop(0))))
            finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                state.commit(task.result())
    finally:
        for task in running:
            task.cancel()
        bar.close()
        state.endpoint_stats = [c.stats() for c in clients]
        for c in clients:
            await c.close()


def run_asyncio(opts: RunOptions, log: Log = print) -> dict[str, Any]:
    """Run the regeneration with plain asyncio; returns the summary (also written to ``summary.json``)."""
    state = prepare(opts, log)
    try:
        if state.pending:
            asyncio.run(_run(state, opts.progress))
        return finish(state, "asyncio", log)
    finally:
        state.close()
