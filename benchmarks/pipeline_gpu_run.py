"""The full pipeline (Mooncake master + reference capture server(s) + torchrun trainer) at the DSpark
Qwen3-8B draft shape, measuring how much of a training step waits for hidden states.

    python benchmarks/pipeline_gpu_run.py --nproc 2 --capture-gpus 2 --steps 40 --out results/
    python benchmarks/pipeline_gpu_run.py --nproc 2 --capture-gpus 2,3 --steps 40 --out results/  # 2 servers
    python benchmarks/pipeline_gpu_run.py --device cpu --tiny --steps 6          # CPU smoke test

It drives ``benchmarks/pipeline_bench.py`` (the trainer engineer's script: ``bench_config`` +
``dspark_trainer.local.pipeline.run_local``) with, instead of the demo's tiny setting:

- a random-weight Qwen3 target built here (nothing can be downloaded): hidden 4096, 32/8 heads of 128,
  intermediate 12288, vocab 151936 (Qwen3-8B's layer shape) with ``--target-layers`` layers (8: the
  fewest that give 5 evenly spaced capture layers) and the bundled demo tokenizer;
- the published draft shape: block 7, 5 draft layers, 512 anchors, 5 captured layers, Markov rank 256;
- long samples (``--max-length`` 2048): conversations whose assistant turns concatenate many demo
  replies, so that each sample carries T x 5 x 4096 bf16 hidden states (84 MB at T = 2048);
- the capture server on its own GPU (``--capture-gpus 2``), as in a deployment, so the trainer ranks
  (cuda:0 .. nproc-1) do not share their GPU with the target; or several capture servers, one per GPU
  (``--capture-gpus 2,3``), all feeding the one trainer (one server's forward + Mooncake put saturates
  at ~14 samples/s). This is ``run_local``'s ``LocalOptions.capture_devices`` (``cuda:2,cuda:3``);
  ``--capture-gpu N`` is the one-GPU shortcut of earlier runs. Without either, the single server runs on
  cuda:0 with trainer rank 0. The target is built once, on the first capture GPU.

The trainer's /metrics are scraped every second; the data-wait share is computed from the step-time and
data-wait histograms between the first scrape at or after ``--skip`` steps (compilation, warm-up)
and the last one, and over the whole run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dspark_trainer.assets import LOCAL_DEMO_CONFIG  # noqa: F401
from dspark_trainer.local.pipeline import LocalOptions, run_local
from pipeline_bench import bench_config, histogram

DEMO = Path(__file__).resolve().parents[1] / "trainer" / "dspark_trainer" / "assets" / "demo_conversations.jsonl"


def build_target(path: Path, *, hidden: int, layers: int, vocab: int, heads: int, kv_heads: int, inter: int,
                 device: str) -> Path:
    """A random Qwen3 target (bf16 safetensors) with the bundled demo tokenizer and chat template."""
    import torch
    from dspark_trainer.local.tiny_model import make_tiny_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if (path / "config.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(vocab)
    tok.save_pretrained(str(path))
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=4096, tie_word_embeddings=False, rope_theta=1e6,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model.to(dtype).save_pretrained(str(path))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return path


def long_conversations(path: Path, n: int, replies_per_turn: int, seed: int = 0) -> Path:
    """``n`` conversations of 2 user/assistant turns; each assistant turn joins ``replies_per_turn`` demo replies."""
    records = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    users = [m["content"] for r in records for m in r["messages"] if m["role"] == "user"]
    replies = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            msgs: list[dict[str, str]] = []
            for _ in range(2):
                msgs.append({"role": "user", "content": " ".join(rng.sample(users, 3))})
                msgs.append({"role": "assistant", "content": " ".join(rng.choices(replies, k=replies_per_turn))})
            f.write(json.dumps({"id": f"long-{i:05d}", "messages": msgs}) + "\n")
    return path


def capture_gpus(args: argparse.Namespace) -> list[int] | None:
    """The capture servers' GPUs from ``--capture-gpus 2,3`` or ``--capture-gpu N`` (None: neither given)."""
    if args.capture_gpus is not None and args.capture_gpu is not None:
        raise SystemExit("pipeline_gpu_run.py: give --capture-gpus or --capture-gpu, not both")
    if args.capture_gpu is not None:
        return [args.capture_gpu]
    if args.capture_gpus is None:
        return None
    try:
        gpus = [int(part) for part in args.capture_gpus.split(",")]
    except ValueError:
        raise SystemExit(f"pipeline_gpu_run.py: --capture-gpus {args.capture_gpus!r}: give GPU indices, "
                         f"comma separated (e.g. 2,3)") from None
    if not gpus or any(g < 0 for g in gpus):
        raise SystemExit(f"pipeline_gpu_run.py: --capture-gpus {args.capture_gpus!r}: give GPU indices >= 0")
    return gpus


def scrape_all(port_file: Path, stop: threading.Event, snaps: list[tuple[float, str]]) -> None:
    while not stop.wait(1.0):
        try:
            cfg = yaml.safe_load(port_file.read_text())
            port = int(cfg["metrics"]["port"])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                snaps.append((time.monotonic(), resp.read().decode()))
        except (OSError, ValueError, KeyError, TypeError):
            continue


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def window(snaps: list[tuple[float, str]], skip: int) -> dict[str, Any]:
    """Step time / data wait between the first snapshot at >= ``skip`` steps and the last snapshot."""
    with_steps = [(t, s, gauge(s, "dspark_train_step") or 0.0) for t, s in snaps]
    first = next(((t, s, k) for t, s, k in with_steps if k >= skip), None)
    if first is None or not with_steps:
        return {}
    # the last snapshot of the training loop (after it: eval, checkpoint, export)
    final = with_steps[-1][2]
    last = next((t, s, k) for t, s, k in with_steps if k == final)
    out: dict[str, Any] = {"from_step": first[2], "to_step": last[2]}
    for key, name in (("step", "dspark_train_step_seconds"), ("wait", "dspark_train_data_wait_seconds"),
                      ("get", "dspark_transport_get_seconds")):
        a, b = histogram(first[1], name), histogram(last[1], name)
        count = b.get("count", 0.0) - a.get("count", 0.0)
        total = b.get("sum", 0.0) - a.get("sum", 0.0)
        out[f"{key}_count"] = count
        out[f"{key}_mean_s"] = total / count if count else None
    name = "dspark_train_samples_total"
    samples = (gauge(last[1], name) or 0.0) - (gauge(first[1], name) or 0.0)
    elapsed = last[0] - first[0]
    out["samples"] = samples
    out["samples_per_s_wall"] = samples / elapsed if elapsed > 0 else None
    if out.get("step_mean_s") and out.get("step_count"):
        out["samples_per_s"] = samples / (out["step_count"] * out["step_mean_s"])
    if out.get("step_mean_s") and out.get("wait_mean_s") is not None:
        out["data_wait_fraction"] = out["wait_mean_s"] / out["step_mean_s"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny target and draft (CPU smoke test)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--capture-gpus", default=None, metavar="N[,N...]",
                        help="GPUs of the capture servers, one server each, comma separated (e.g. 2,3; "
                        "default: one server on cuda:0)")
    parser.add_argument("--capture-gpu", type=int, default=None, metavar="N",
                        help="one capture server on GPU N (the same as --capture-gpus N)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=8, help="steps left out of the steady-state window")
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--target-layers", type=int, default=8)
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--segment-mib", type=int, default=8192,
                        help="Mooncake global segment of the capture server (the demo's 256 MiB holds 2 samples)")
    parser.add_argument("--buffer-mib", type=int, default=1024, help="Mooncake local transfer buffer per process")
    parser.add_argument("--workdir", default="runs/pipeline-gpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    gpus = capture_gpus(args)
    gpus = gpus if args.device == "cuda" else None  # ignored with --device cpu (one CPU server)
    capture_devices = [f"cuda:{g}" for g in gpus] if gpus is not None else None

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.tiny:
        size = {"hidden": 64, "layers": 8, "vocab": 512, "heads": 4, "kv_heads": 2, "inter": 128}
        draft = {"blockSize": 7, "numDraftLayers": 2, "numAnchors": 32, "numTargetLayersCaptured": 5, "markovRank": 16}
        replies = 8
    else:
        size = {"hidden": 4096, "layers": args.target_layers, "vocab": 151936, "heads": 32, "kv_heads": 8,
                "inter": 12288}
        draft = {"blockSize": 7, "numDraftLayers": 5, "numAnchors": 512, "numTargetLayersCaptured": 5,
                 "markovRank": 256}
        replies = 160
    build_dev = f"cuda:{gpus[0] if gpus else 0}" if args.device == "cuda" else "cpu"
    target = build_target(workdir / "target", device=build_dev, **size)
    built_s = time.monotonic() - started
    data = long_conversations(workdir / "long.jsonl", args.conversations, replies)

    ns = argparse.Namespace(device=args.device, precision="auto", target=str(target), steps=args.steps,
                            micro_batch_size=args.micro_batch_size, global_batch_size=args.global_batch_size,
                            max_length=args.max_length, num_anchors=draft["numAnchors"], window=args.window)
    cfg = bench_config(ns)
    cfg["draft"] = {**cfg["draft"], **draft}
    cfg["dataset"] = {**cfg["dataset"], "path": str(data), "evalFraction": 0.01}
    cfg["eval"] = {**cfg["eval"], "maxSamples": 2 * args.nproc}
    cfg["runtime"] = {**cfg["runtime"], "logIntervalSteps": 1}
    # one sample carries T x 5 x 4096 bf16 states + T x 4096 (~100 MB at T = 2048): the demo's 256 MiB
    # store fills with 2-3 of them and the capture server answers 503 store_full
    cfg["transport"] = {**cfg["transport"], "globalSegmentSize": args.segment_mib << 20,
                        "localBufferSize": args.buffer_mib << 20}
    config_path = workdir / "pipeline-config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    snaps: list[tuple[float, str]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=scrape_all, args=(workdir / "job.yaml", stop, snaps), daemon=True)
    watcher.start()
    t0 = time.monotonic()
    code = run_local(LocalOptions(config_path=str(config_path), workdir=str(workdir), nproc=args.nproc,
                                  device=args.device, fresh=True, progress_bar=False,
                                  capture_devices=capture_devices))
    wall = time.monotonic() - t0
    stop.set()
    text = snaps[-1][1] if snaps else ""
    whole = {k: histogram(text, n) for k, n in (("step", "dspark_train_step_seconds"),
                                                 ("wait", "dspark_train_data_wait_seconds"),
                                                 ("get", "dspark_transport_get_seconds"))}
    result = {
        "exit_code": code, "args": vars(args), "draft": draft, "target": size, "target_build_s": built_s,
        # one capture server per entry (cuda:N: alone on GPU N; the default cuda:0 shares GPU 0 with rank 0)
        "capture_devices": capture_devices or (["cuda:0"] if args.device == "cuda" else ["cpu"]),
        "wall_s": wall, "whole_run": whole,
        "whole_run_wait_fraction": (whole["wait"].get("sum", 0) / whole["step"]["sum"]) if whole["step"].get("sum")
        else None,
        "steady": window(snaps, args.skip),
        "bytes_per_sample_hidden": args.max_length * 5 * size["hidden"] * 2,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        name = "pipeline_tiny.json" if args.tiny else "pipeline.json"
        (Path(args.out) / name).write_text(json.dumps(result, indent=2))
    st = result["steady"]
    if st:
        print(f"\npipeline {args.nproc} trainer GPUs, capture on {','.join(result['capture_devices'])}: "
              f"steps {st['from_step']:.0f}-{st['to_step']:.0f}: "
              f"step {st['step_mean_s']} s, data wait {st['wait_mean_s']} s "
              f"({(st.get('data_wait_fraction') or float('nan')):.1%}), {st['samples_per_s']} samples/s")
    return code


if __name__ == "__main__":
    sys.exit(main())
