"""Capture overhead of the reference capture server against the bare forward pass.

    python benchmarks/capture_overhead_bench.py --hidden-size 512 --layers 8 --seq-len 512 --repeats 10
    python benchmarks/capture_overhead_bench.py --device cuda --no-store --exactness   # on a GPU machine

Builds a random Qwen3 target of the given size in a temporary directory and times, per request
(median of --repeats after a warm-up):

  bare      the base model's forward (no hooks, no LM head): the cost that cannot be avoided
  capture   the same forward with the capture hooks (outputs of the listed layers + final norm)
  +put      capture and the batched Mooncake write of the record (staging copy + put), real master
  http      POST /capture to a running reference server, answer received (queue, JSON, forward, put)
  +fetch    http plus the trainer side: read the record from Mooncake into a pooled buffer, delete it

`--exactness` also checks, on the chosen device, whether stacking equal-length sequences into one
forward (the server's default batching) gives results bit-identical to single-sequence forwards,
and whether right-padding with an attention mask does.

`--serving-loop N` instead emulates a serving engine's scheduler loop (SGLang's overlap scheduler:
the next forward is launched before the previous result is processed) over N back-to-back requests,
and reports the time per request of

  plain       plain serving: the forward and a one-row device-to-host copy (the next token), no capture
  capture     the forward with the capture hooks and the copy of every captured row to pinned host memory
  sync_put    capture, and the Mooncake write inside the loop (what the SGLang plugin did before)
  async_put   capture, and the record handed to the asynchronous writer (what the plugin does now); the
              final flush is included, so a writer that cannot keep up shows as back-pressure

    python benchmarks/capture_overhead_bench.py --device cuda --shape qwen3-8b --seq-len 2048 --serving-loop 16

`--shape qwen3-8b` builds a random target of Qwen3-8B's sizes (36 layers, hidden 4096) directly on the
device instead of writing one to disk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def make_target(path: Path, hidden: int, layers: int, vocab: int, seq_len: int) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), head_dim=64,
        max_position_embeddings=max(2048, seq_len), tie_word_embeddings=False,
    )
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    return path


SHAPES: dict[str, dict[str, int]] = {
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 1536,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 4096},
    "qwen3-8b": {"hidden_size": 4096, "num_hidden_layers": 36, "intermediate_size": 12288,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936},
    # the same sizes with 8 layers: a forward shorter than the 100 MB record's write
    "qwen3-8b-l8": {"hidden_size": 4096, "num_hidden_layers": 8, "intermediate_size": 12288,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936},
}


def make_module(shape: str, device: str, seq_len: int) -> Any:
    """A random Qwen3 base model of a named shape, built on ``device`` in bf16 (no files)."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    cfg = Qwen3Config(**SHAPES[shape], max_position_embeddings=max(4096, seq_len), tie_word_embeddings=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return Qwen3Model(cfg)
    finally:
        torch.set_default_dtype(default)


def serving_loop(engine: Any, transport: Any, ids: list[int], n: int, rounds: int) -> dict[str, Any]:
    """Per-request milliseconds of the serving-loop variants (see the module docstring), interleaved rounds."""
    import torch
    from dspark_trainer.transport.async_writer import AsyncRecordWriter
    from dspark_trainer.transport.record import make_base_key

    cuda = engine.device.type == "cuda"

    def to_host(t: torch.Tensor) -> torch.Tensor:
        if not cuda:
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    def launch_plain() -> tuple[Any, Any]:
        (last,) = engine.bare_forward([ids])
        out = to_host(last[0, -1:])
        return (torch.cuda.Event() if cuda else None), out

    def launch_capture() -> tuple[Any, Any]:
        (st,) = engine.capture([ids])
        fields = {"hidden": [to_host(p) for p in st.hidden_parts], "last_hidden": to_host(st.last_hidden)}
        return (torch.cuda.Event() if cuda else None), fields

    written: list[str] = []
    record_bytes = len(ids) * (len(engine.layer_ids) + 1) * engine.hidden_size * 2
    writer = AsyncRecordWriter(transport.put_records, max_records=64, max_bytes=max(2 << 30, 4 * record_bytes),
                               block_seconds=600.0, name="bench writer")

    def sync_put(fields: Any) -> None:
        base = make_base_key("loop")
        transport.put_records([(base, fields)])
        written.append(base)

    def async_put(fields: Any) -> None:
        base = make_base_key("loop")
        writer.submit(base, fields)
        written.append(base)

    variants: dict[str, tuple[Any, Any]] = {
        "plain": (launch_plain, None),
        "capture": (launch_capture, None),
        "sync_put": (launch_capture, sync_put),
        "async_put": (launch_capture, async_put),
    }

    def run(launch: Any, hook: Any) -> float:
        t0 = time.perf_counter()
        prev: tuple[Any, Any] | None = None
        for i in range(n + 1):
            cur = None
            if i < n:
                event, payload = launch()
                if event is not None:
                    event.record()
                cur = (event, payload)
            if prev is not None:
                if prev[0] is not None:
                    prev[0].synchronize()
                if hook is not None:
                    hook(prev[1])
            prev = cur
        writer.flush(600.0)
        return (time.perf_counter() - t0) / n

    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds + 1):  # round 0 warms up
        for name, (launch, hook) in variants.items():
            per_request = run(launch, hook)
            if written:
                transport.delete_records(written)
                written.clear()
            if r:
                times[name].append(per_request)
    writer.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "requests_per_round": n, "rounds": rounds,
        "per_request_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "per_request_ms_min": {k: round(1000 * min(v), 2) for k, v in times.items()},
        "overhead_vs_plain_pct": {k: round(100 * (v / med["plain"] - 1), 1) for k, v in med.items() if k != "plain"},
        "writer": {"written": writer.stats.written, "blocked": writer.stats.blocked,
                   "blocked_seconds": round(writer.stats.blocked_seconds, 3)},
    }


def timed(
    variants: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Median seconds of each variant, measured interleaved (one of each per round) so drifting machine
    load hits all of them alike; one warm-up round first."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats + 1):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
    return times


def exactness(engine: Any, vocab: int, seq_lens: list[int]) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(1)
    rows = []
    for t in seq_lens:
        for b in (2, 4, 8):
            seqs = [torch.randint(0, vocab, (t,), generator=g).tolist() for _ in range(b)]
            stacked = engine.capture(seqs)
            engine_mode, engine.batch_mode = engine.batch_mode, "per_sample"
            single = engine.capture(seqs)
            engine.batch_mode = engine_mode
            same = all(
                torch.equal(a.last_hidden, s.last_hidden)
                and all(torch.equal(x, y) for x, y in zip(a.hidden_parts, s.hidden_parts, strict=True))
                for a, s in zip(stacked, single, strict=True)
            )
            rows.append({"check": "equal_length_stack", "seq_len": t, "batch": b, "bit_identical": same})
        # right padding with an attention mask: a short sequence next to a long one
        short = torch.randint(0, vocab, (t // 2,), generator=g)
        long = torch.randint(0, vocab, (t,), generator=g)
        ids = torch.zeros(2, t, dtype=torch.long)
        ids[0, : t // 2] = short
        ids[1] = long
        mask = torch.zeros(2, t, dtype=torch.long)
        mask[0, : t // 2] = 1
        mask[1] = 1
        with torch.inference_mode():
            padded = engine.base(input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device),
                                 use_cache=False).last_hidden_state
        alone = engine.capture([short.tolist()])[0].last_hidden
        diff = (padded[0, : t // 2].float() - alone.float()).abs().max().item()
        rows.append({"check": "right_padding", "seq_len": t, "batch": 2, "bit_identical": diff == 0.0,
                     "max_abs_diff": diff})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-store", action="store_true", help="skip the Mooncake and HTTP measurements")
    parser.add_argument("--exactness", action="store_true", help="check batching exactness on this device")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a named target shape, built on the device")
    parser.add_argument("--serving-loop", type=int, metavar="N", help="run the serving-loop comparison instead")
    parser.add_argument("--rounds", type=int, default=3, help="serving-loop rounds (after one warm-up round)")
    args = parser.parse_args()

    import torch
    from dspark_trainer.capture.engine import CaptureEngine

    sync: Callable[[], None] = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.shape:
        dims = SHAPES[args.shape]
        args.hidden_size, args.layers, args.vocab = dims["hidden_size"], dims["num_hidden_layers"], dims["vocab_size"]
        engine = CaptureEngine(make_module(args.shape, args.device, args.seq_len), None, device=args.device,
                               max_seq_len=max(2048, args.seq_len))
    else:
        work = Path(tempfile.mkdtemp(prefix="dspark-capture-bench-"))
        target = make_target(work / "target", args.hidden_size, args.layers, args.vocab, args.seq_len)
        engine = CaptureEngine(target, None, device=args.device, max_seq_len=max(2048, args.seq_len))
    ids = torch.randint(0, args.vocab, (args.seq_len,), generator=torch.Generator().manual_seed(0)).tolist()
    record_bytes = args.seq_len * (len(engine.layer_ids) + 1) * args.hidden_size * 2
    out: dict[str, Any] = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "model": f"random Qwen3 hidden {args.hidden_size}, {args.layers} layers, vocab {args.vocab}, bf16",
        "layer_ids": engine.layer_ids,
        "seq_len": args.seq_len,
        "record_bytes": record_bytes,
    }
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    variants: dict[str, Callable[[], Any]] = {
        "bare": lambda: engine.bare_forward([ids]),
        "capture": lambda: engine.capture([ids]),
    }
    if args.serving_loop:
        from dspark_trainer.transport import MooncakeTransport
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test harness
        from harness.mooncake import MooncakeMaster

        with MooncakeMaster() as master:
            cfg = master.transport_config(global_segment_size=max(1 << 30, (args.serving_loop + 8) * record_bytes))
            with MooncakeTransport(cfg, name="bench-server") as transport:
                out["serving_loop"] = serving_loop(engine, transport, ids, args.serving_loop, args.rounds)
        print(json.dumps(out) if args.json else json.dumps(out, indent=2))
        return 0
    if args.no_store:
        res = timed(variants, args.repeats, sync)
    else:
        from dspark_trainer.capture.server import ServerSettings, start_capture_server
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test harness
        from dspark_trainer.transport import MooncakeTransport, RecordInfo, make_base_key
        from harness.mooncake import MooncakeMaster

        with MooncakeMaster() as master:
            cfg = master.transport_config(global_segment_size=max(256 << 20, 8 * record_bytes))
            writer = MooncakeTransport(cfg, name="bench-writer").connect()
            server = start_capture_server(engine, MooncakeTransport(cfg, name="bench-server"),
                                          ServerSettings(batch_window_ms=0.0, janitor=False))
            reader = MooncakeTransport(cfg, segment_size=0, name="bench-reader").connect()
            pool = reader.new_buffer_pool()
            body = json.dumps({"request_id": "bench", "input_ids": ids}).encode()

            def capture_put() -> None:
                (st,) = engine.capture([ids])
                base = make_base_key("bench")
                writer.put_records([(base, {"hidden": st.hidden_parts, "last_hidden": st.last_hidden})])
                writer.delete_records([base])

            def post() -> dict[str, Any]:
                req = urllib.request.Request(f"{server.url}/capture", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req) as resp:
                    answer: dict[str, Any] = json.loads(resp.read())
                return answer

            def http_only() -> None:
                reader.delete_records([post()["key"]])

            def http_fetch() -> None:
                answer = post()
                (rec,) = reader.get_records([RecordInfo.from_json(answer)], pool)
                rec.release()
                reader.delete_records([answer["key"]])

            variants.update({"capture+put": capture_put, "http": http_only, "http+fetch": http_fetch})
            res = timed(variants, args.repeats, sync)
            pool.close()
            reader.close()
            server.stop()
            writer.close()
    med = {k: statistics.median(v) for k, v in res.items()}
    best = {k: min(v) for k, v in res.items()}
    out["median_ms"] = {k: round(v * 1000, 2) for k, v in med.items()}
    out["min_ms"] = {k: round(v * 1000, 2) for k, v in best.items()}
    for label, vals in (("median", med), ("min", best)):
        out[f"overhead_vs_bare_pct_{label}"] = {
            k: round(100 * (v / vals["bare"] - 1), 1) for k, v in vals.items() if k != "bare"
        }
    if args.exactness:
        out["exactness"] = exactness(engine, args.vocab, [64, args.seq_len])
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
