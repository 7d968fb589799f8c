"""The engine-independent driver steps: plan, readiness, manifest check and resume state before the work;
commits, counts and the summary after each shard and at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dspark_trainer.regenerate.endpoints import normalize_endpoint, wait_for_endpoints
from dspark_trainer.regenerate.options import RunOptions
from dspark_trainer.regenerate.output import OutputDir, ShardResult, atomic_write_json
from dspark_trainer.regenerate.plan import Plan, ShardSpec, make_plan

Log = Callable[[str], None]


@dataclass
class RunState:
    """Everything the engines share during one run."""

    opts: RunOptions
    plan: Plan
    out: OutputDir
    endpoints: list[str]
    model: str
    done: dict[int, dict[str, Any]]
    pending: list[ShardSpec]
    started: float = field(default_factory=time.monotonic)
    samples_read: int = 0
    written: int = 0
    rejected: int = 0
    retried: int = 0
    requests: int = 0
    shards_written: int = 0
    endpoint_stats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending_samples(self) -> int:
        return sum(s.count for s in self.pending)

    @property
    def done_samples(self) -> int:
        return sum(int(st.get("samples", 0)) for st in self.done.values())

    def close(self) -> None:
        """Release the output directory's run lock."""
        self.out.unlock()

    def commit(self, result: ShardResult) -> bool:
        """Commit one shard's result (once); returns False for a duplicate delivery of a committed shard."""
        if result.shard in self.done:
            return False
        spec = self.plan.shards[result.shard]
        if result.samples != spec.count or result.written + result.rejected != spec.count:
            raise RuntimeError(
                f"shard {result.shard}: {result.written} written + {result.rejected} rejected != {spec.count} samples"
            )
        self.done[result.shard] = self.out.commit(
            result, extra={"model": self.model, "committed_at": datetime.now(UTC).isoformat()}
        )
        self.samples_read += result.samples
        self.written += result.written
        self.rejected += result.rejected
        self.retried += result.retried
        self.requests += result.requests
        self.shards_written += 1
        return True


def prepare(opts: RunOptions, log: Log) -> RunState:
    """Plan the shards, wait for the endpoints, check the output's manifest, find the shards left to do."""
    endpoints = [normalize_endpoint(e) for e in opts.endpoints]
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"an endpoint is given twice: {endpoints}")
    plan = make_plan(opts.input, opts.shard_size)
    log(f"input: {plan.num_samples} samples in {len(plan.inputs)} file(s) -> {len(plan.shards)} shard(s) "
        f"of up to {plan.shard_size}")
    models = wait_for_endpoints(endpoints, opts.wait_endpoints_s)
    model = opts.model
    if model is None:
        first = models[endpoints[0]]
        if not first:
            raise RuntimeError(f"{endpoints[0]}/v1/models lists no model; pass --model")
        model = first[0]
    others = {ep: ids for ep, ids in models.items() if ids and model not in ids}
    if others:
        log(f"warning: model {model!r} is not listed by {sorted(others)} (they list {others})")
    out = OutputDir(opts.output)
    out.lock()  # the caller unlocks (RunState.close)
    try:
        out.check_manifest({
            "plan": plan.fingerprint(), "sampling": opts.sampling.to_record(), "model": model,
            "endpoints": endpoints, "created_at": datetime.now(UTC).isoformat(),
        })
        done: dict[int, dict[str, Any]] = {}
        for spec in plan.shards:
            state = out.committed(spec.shard)
            if state is not None:
                done[spec.shard] = state
    except BaseException:
        out.unlock()
        raise
    pending = [s for s in plan.shards if s.shard not in done]
    if done:
        log(f"resume: {len(done)} shard(s) already written, {len(pending)} to do")
    return RunState(opts, plan, out, endpoints, model, done, pending)


def finish(state: RunState, engine: str, log: Log) -> dict[str, Any]:
    """Write and print the summary."""
    elapsed = time.monotonic() - state.started
    total_written = sum(int(st.get("written", 0)) for st in state.done.values())
    total_rejected = sum(int(st.get("rejected", 0)) for st in state.done.values())
    total_retried = sum(int(st.get("retried", 0)) for st in state.done.values())
    summary: dict[str, Any] = {
        "run": {
            "engine": engine, "read": state.samples_read, "written": state.written, "rejected": state.rejected,
            "retried": state.retried, "requests": state.requests, "shards_written": state.shards_written,
            "shards_skipped": len(state.plan.shards) - len(state.pending), "elapsed_s": round(elapsed, 3),
            "samples_per_s": round(state.samples_read / elapsed, 3) if elapsed > 0 else None,
            "requests_per_s": round(state.requests / elapsed, 3) if elapsed > 0 else None,
        },
        "total": {
            "samples": state.plan.num_samples, "shards": len(state.plan.shards), "shards_done": len(state.done),
            "written": total_written, "rejected": total_rejected, "retried": total_retried,
            "complete": len(state.done) == len(state.plan.shards),
        },
        "model": state.model, "endpoints": state.endpoints, "endpoint_stats": state.endpoint_stats,
        "sampling": state.opts.sampling.to_record(), "output": str(state.out.root),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    atomic_write_json(state.out.summary_path, summary)
    run = summary["run"]
    log(f"regenerate: read {run['read']}, written {run['written']}, rejected {run['rejected']}, "
        f"retried {run['retried']} ({run['shards_written']} shard(s) written, {run['shards_skipped']} skipped) "
        f"in {elapsed:.1f}s; output total {total_written} written + {total_rejected} rejected of "
        f"{state.plan.num_samples}; summary: {state.out.summary_path}")
    log(json.dumps({"counts": {k: run[k] for k in ("read", "written", "rejected", "retried")}}))
    return summary
