"""Regeneration benchmark (not a test): requests per second against the reference server with 1 and 2
endpoints, and Ray's overhead against plain asyncio doing the same requests.

Starts two reference chat servers (``dspark_trainer.capture.chat_completions``, one torch thread each) serving a
tiny random Qwen3 target (or ``--model DIR``), and two stub servers that answer a canned completion at once (no
model: what is left is the client's own cost). For each server kind and 1 / 2 endpoints it runs the same
single-turn samples through:

- ``asyncio-raw``: a bare aiohttp client (gather, one semaphore per endpoint) -- the floor;
- ``asyncio-engine``: ``dspark data regenerate --engine asyncio`` in process (same plan, retries, commits; no Ray);
- ``ray``: ``dspark data regenerate`` (Ray Data, gateway actors) in process, on an already started local Ray
  (``ray.init`` is timed apart). Its fixed cost (actor start, the Ray Data execution) is estimated with a
  one-shard run of ``--shard-size`` samples and reported apart from the marginal rate.

Each scenario runs ``--repeat`` times, interleaved across clients; the median is reported.

It also times one request at a time through the Ray gateway actor against the direct client (stub server):
the per-request cost of the actor hop.

    .venv/bin/python benchmarks/regenerate_bench.py [--samples 96] [--max-tokens 16] [--json out.json]

Numbers depend on the machine's free CPUs: the servers, the client and Ray share them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUB_REPLY = {
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "stub answer"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}


def serve_stub(port_file: str) -> None:
    """A server that answers every chat request at once (``--stub-server``)."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(STUB_REPLY)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        Path(port_file + ".tmp").write_text(str(port))
        Path(port_file + ".tmp").replace(port_file)
        await asyncio.Event().wait()

    asyncio.run(main())


class Server:
    def __init__(self, cmd: list[str], port_file: Path, log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.port_file = port_file
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def url(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def write_samples(path: Path, n: int) -> None:
    lines = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"Question number {i}: say something about the number {i * 7}."},
                {"role": "assistant", "content": "to be regenerated"}]
        lines.append(json.dumps({"id": f"b{i}", "messages": msgs}))
    path.write_text("\n".join(lines) + "\n")


async def asyncio_raw(endpoints: list[str], n: int, concurrency: int, payload: dict[str, Any]) -> float:
    """Seconds for ``n`` requests spread round robin, ``concurrency`` in flight per endpoint."""
    import aiohttp

    sems = [asyncio.Semaphore(concurrency) for _ in endpoints]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            k = i % len(endpoints)
            body = {**payload, "messages": [{"role": "user", "content": f"Question number {i}."}]}
            async with sems[k], session.post(f"{endpoints[k]}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start


def run_engine(engine: str, inp: Path, out: Path, endpoints: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from dspark_trainer.regenerate.options import RetryPolicy, RunOptions, SamplingParams

    shutil.rmtree(out, ignore_errors=True)
    opts = RunOptions(
        input=str(inp), output=out, endpoints=tuple(endpoints), shard_size=args.shard_size, workers=args.workers,
        concurrency_per_endpoint=args.concurrency, progress=False, num_cpus=args.num_cpus,
        sampling=SamplingParams(max_tokens=args.max_tokens, extra_body={"ignore_eos": True}),
        retry=RetryPolicy(max_retries=2, backoff_base_s=0.1),
    )
    start = time.perf_counter()
    if engine == "ray":
        from dspark_trainer.regenerate.pipeline import run_ray

        summary = run_ray(opts, lambda m: None)
    else:
        from dspark_trainer.regenerate.local import run_asyncio

        summary = run_asyncio(opts, lambda m: None)
    seconds = time.perf_counter() - start
    assert summary["total"]["complete"] and summary["run"]["rejected"] == 0, summary
    return {"seconds": seconds, "requests": summary["run"]["requests"]}


async def hop_latency(endpoint: str, n: int) -> dict[str, float]:
    """Median milliseconds of one request at a time: direct client vs through the Ray gateway actor."""
    from dspark_trainer.regenerate.endpoints import ChatClient
    from dspark_trainer.regenerate.pipeline import GatewayActor

    payload = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}
    client = ChatClient(endpoint, 1, 30)
    gateway = GatewayActor.options(max_concurrency=16).remote(endpoint, 1, 30)
    direct, via_ray = [], []
    for _ in range(10):  # warm-up
        await client.chat(payload)
        await gateway.chat.remote(payload)
    for _ in range(n):
        t = time.perf_counter()
        assert (await client.chat(payload)).ok
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert (await gateway.chat.remote(payload)).ok
        via_ray.append(time.perf_counter() - t)
    await client.close()
    import ray

    ray.kill(gateway)
    return {"direct_ms": 1000 * statistics.median(direct), "ray_gateway_ms": 1000 * statistics.median(via_ray)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--stub-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="model directory (default: a tiny random Qwen3 target)")
    p.add_argument("--samples", type=int, default=96, help="single-turn samples per scenario (model servers)")
    p.add_argument("--stub-samples", type=int, default=1000, help="samples per scenario against the stub servers")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight per endpoint")
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--hop-requests", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3, help="runs of each scenario (the median is reported)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.stub_server:
        serve_stub(args.stub_server)
        return 0

    import ray
    from dspark_trainer.local.tiny_model import make_tiny_qwen3_target

    work = Path(tempfile.mkdtemp(prefix="regen-bench-"))
    model = args.model or str(make_tiny_qwen3_target(work / "tiny", num_layers=2, hidden_size=64))
    servers: dict[str, list[Server]] = {"model": [], "stub": []}
    for i in range(2):
        servers["model"].append(Server(
            [sys.executable, "-m", "dspark_trainer.capture.chat_completions", "--model", model, "--served-model-name",
             "tiny", "--port", "0", "--port-file", str(work / f"m{i}.port"), "--torch-threads", "1"],
            work / f"m{i}.port", work / f"m{i}.log"))
        servers["stub"].append(Server([sys.executable, __file__, "--stub-server", str(work / f"s{i}.port")],
                                      work / f"s{i}.port", work / f"s{i}.log"))
    results: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "args": vars(args)}
    try:
        urls = {kind: [s.url() for s in group] for kind, group in servers.items()}
        payload = {"max_tokens": args.max_tokens, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "ignore_eos": True,
                   "chat_template_kwargs": {"enable_thinking": False}}
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
        meta["ray_init_s"] = round(time.perf_counter() - start, 2)
        for kind in ("model", "stub"):
            n = args.samples if kind == "model" else args.stub_samples
            inp = work / f"{kind}.jsonl"
            write_samples(inp, n)
            small = work / f"{kind}-small.jsonl"
            write_samples(small, args.shard_size)
            asyncio.run(asyncio_raw(urls[kind], 16, args.concurrency, payload))  # warm-up
            for n_ep in (1, 2):
                eps = urls[kind][:n_ep]
                runs: dict[str, list[float]] = {"asyncio-raw": [], "asyncio-engine": [], "ray": [],
                                                "ray-one-shard": [], "asyncio-engine-one-shard": []}
                for _ in range(args.repeat):  # interleaved, so a change of load hits every client alike
                    runs["asyncio-raw"].append(asyncio.run(asyncio_raw(eps, n, args.concurrency, payload)))
                    runs["asyncio-engine"].append(run_engine("asyncio", inp, work / "out", eps, args)["seconds"])
                    runs["ray"].append(run_engine("ray", inp, work / "out", eps, args)["seconds"])
                    runs["ray-one-shard"].append(run_engine("ray", small, work / "out", eps, args)["seconds"])
                    runs["asyncio-engine-one-shard"].append(
                        run_engine("asyncio", small, work / "out", eps, args)["seconds"])
                med = {name: statistics.median(values) for name, values in runs.items()}
                # Ray's fixed cost per run: a one-shard run on Ray minus the same on asyncio (actor start, Ray Data
                # execution set-up); its marginal rate: the extra requests of the full run over the extra time
                ray_fixed = med["ray-one-shard"] - med["asyncio-engine-one-shard"]
                extra_s = med["ray"] - med["ray-one-shard"]
                for client in ("asyncio-raw", "asyncio-engine", "ray"):
                    results.append({"server": kind, "endpoints": n_ep, "client": client, "requests": n,
                                    "seconds": round(med[client], 3), "requests_per_s": round(n / med[client], 1),
                                    "all_seconds": [round(v, 3) for v in runs[client]]})
                results.append({"server": kind, "endpoints": n_ep, "client": "ray, marginal (fixed cost removed)",
                                "requests": n - args.shard_size, "seconds": round(extra_s, 3),
                                "requests_per_s": round((n - args.shard_size) / extra_s, 1) if extra_s > 0 else None,
                                "ray_fixed_cost_s": round(ray_fixed, 2)})
                print(json.dumps(results[-4:]), flush=True)
        meta["hop_latency"] = asyncio.run(hop_latency(urls["stub"][0], args.hop_requests))
    finally:
        ray.shutdown()
        for group in servers.values():
            for s in group:
                s.stop()
        meta["load_avg_end"] = os.getloadavg()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'server':7} {'eps':>3} {'client':36} {'requests':>8} {'seconds':>8} {'req/s':>8}")
    for r in results:
        rps = r["requests_per_s"] if r["requests_per_s"] is not None else float("nan")
        extra = f"  (Ray fixed cost {r['ray_fixed_cost_s']} s)" if "ray_fixed_cost_s" in r else ""
        print(f"{r['server']:7} {r['endpoints']:>3} {r['client']:36} {r['requests']:>8} {r['seconds']:>8.2f} "
              f"{rps:>8.1f}{extra}")
    hop = meta["hop_latency"]
    print(f"\nray.init: {meta['ray_init_s']} s; one request at a time (stub): direct {hop['direct_ms']:.2f} ms, "
          f"through the Ray gateway actor {hop['ray_gateway_ms']:.2f} ms")
    print(f"CPUs {meta['cpus']}, load average at start {meta['load_avg_start']}, at end {meta['load_avg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "meta": meta}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
