"""Pipeline benchmark: the embedded pipeline (Mooncake master, reference capture server, torchrun
trainer) on this machine's GPUs (NCCL) or CPUs (gloo), reporting throughput from the trainer's
metrics. Only the config differs from the CPU demo.

    python benchmarks/pipeline_bench.py --device cuda --nproc 2 --steps 50 --out bench.json
    python benchmarks/pipeline_bench.py --device cpu --nproc 2 --steps 10          # smoke run

Options map onto the trainer config (see docs/trainer.md); ``--target`` takes a Hugging Face
directory (default: the tiny random Qwen3 the demo creates). The JSON written to ``--out`` holds the
config, wall time, final loss/tau and the trainer's step-time and data-wait histograms.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from dspark_trainer.assets import LOCAL_DEMO_CONFIG
from dspark_trainer.local.pipeline import LocalOptions, run_local


def bench_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(LOCAL_DEMO_CONFIG.read_text())
    if args.target:
        cfg["target"] = {"model": args.target, "dtype": "bfloat16" if args.device == "cuda" else "float32"}
    cfg["runtime"] = {**cfg.get("runtime", {}), "device": args.device, "precision": args.precision,
                      "logIntervalSteps": 10}
    cfg["schedule"] = {**cfg["schedule"], "maxSteps": args.steps, "microBatchSize": args.micro_batch_size,
                       "globalBatchSize": args.global_batch_size}
    cfg["dataset"] = {**cfg["dataset"], "maxLength": args.max_length}
    cfg["draft"] = {**cfg["draft"], "numAnchors": args.num_anchors}
    cfg["checkpoint"] = {**cfg["checkpoint"], "intervalSteps": max(args.steps, 1)}
    cfg["eval"] = {**cfg["eval"], "intervalSteps": max(args.steps, 1)}
    cfg["capture"] = {**cfg["capture"], "window": args.window}
    return cfg


def scrape(port_file: Path, stop: threading.Event, out: dict[str, Any]) -> None:
    """Keep the last /metrics text of the trainer while it runs (it exits when done)."""
    while not stop.wait(2.0):
        try:
            cfg = yaml.safe_load(port_file.read_text())
            port = int(cfg["metrics"]["port"])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                out["metrics"] = resp.read().decode()
        except (OSError, ValueError, KeyError, TypeError):
            continue


def histogram(text: str, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_sum ") or line.startswith(f"{name}_count "):
            key, value = line.split()
            values[key.rsplit("_", 1)[1]] = float(value)
    if values.get("count"):
        values["mean"] = values["sum"] / values["count"]
    return values


def gauge(text: str, name: str) -> float | None:
    """The value of an unlabelled gauge in Prometheus text format, or None when absent."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--target", default=None, help="target directory (default: the tiny demo target)")
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--num-anchors", type=int, default=32)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--workdir", default="runs/pipeline-bench")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "bench-config.yaml"
    config_path.write_text(yaml.safe_dump(bench_config(args), sort_keys=False))
    scraped: dict[str, Any] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=scrape, args=(workdir / "job.yaml", stop, scraped), daemon=True)
    watcher.start()
    started = time.monotonic()
    code = run_local(LocalOptions(config_path=str(config_path), workdir=str(workdir), nproc=args.nproc,
                                  device=args.device, fresh=True, progress_bar=False))
    wall = time.monotonic() - started
    stop.set()
    marker_path = workdir / "draft" / "dspark_complete.json"
    marker = json.loads(marker_path.read_text()) if marker_path.exists() else {}
    text = scraped.get("metrics", "")
    result = {
        "exit_code": code,
        "args": vars(args),
        "wall_seconds": wall,
        "steps": marker.get("step"),
        "samples": marker.get("samples"),
        "loss": marker.get("loss"),
        "tau": marker.get("tau"),
        "step_seconds": histogram(text, "dspark_train_step_seconds"),
        "data_wait_seconds": histogram(text, "dspark_train_data_wait_seconds"),
        "transport_get_seconds": histogram(text, "dspark_transport_get_seconds"),
        "gpu_memory_peak_bytes": gauge(text, "dspark_train_gpu_memory_peak_bytes"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
