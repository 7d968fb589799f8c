"""FSDP2 weak-scaling benchmark of the DSpark draft: micro-batch 1 per GPU, synthetic data.

    torchrun --nproc-per-node 4 benchmarks/fsdp_scaling_bench.py --out results/
    torchrun --nproc-per-node 2 benchmarks/fsdp_scaling_bench.py --device cpu --tiny      # gloo smoke test

Each rank builds the draft at the published Qwen3-8B shape (see train_step_bench.py) on its device,
shards it with FSDP2 and times forward+backward of one micro-batch (FSDP2 all-gathers and the
gradient reduce-scatter included) and the optimizer step (grad-norm clip + AdamW), for each
``--settings`` entry, in one process group:

  runtime         exactly ``dspark_trainer.runtime.fsdp.shard_model`` + ``build_optimizer`` (since the lean
                  settings were adopted there: frozen embedding / LM head out of FSDP in bf16, fused AdamW)
  old_runtime     the runtime before that: fp32 sharded parameters (frozen embedding / LM head too), bf16
                  compute, fp32 gradient reduction, for-each AdamW
  lean            the frozen embedding and LM head kept out of FSDP (``ignored_params``), replicated in
                  bf16 (no all-gather of 1.2 B frozen values per forward, no fp32 copy of them), fused AdamW
  lean_noreshard  lean + ``reshard_after_forward=False`` for the decoder layers (no all-gather in backward)
  runtime_defer   runtime with the trainer's default accumulation (``runtime/step.py``: parameters gathered
                  once and gradients reduce-scattered once per optimizer step): micro-batches are timed
                  inside a step (no communication), plus the step's last micro-batch (reduce-scatter)

samples/s per GPU = 1 / (micro-batch time + (extra time of the step's last micro-batch + optimizer time) /
accumulation) (the extra time is 0 unless the setting defers the gradient sync), where the accumulation is
the recipe's global batch (512) / GPUs micro-batches per optimizer step; the value with an optimizer
step after every micro-batch is reported too. The slowest rank's median is used.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dspark_trainer.config.training import OptimizerConfig
from dspark_trainer.model.draft import DSparkDraftModel
from dspark_trainer.runtime.fsdp import build_optimizer, shard_model
from dspark_trainer.runtime.step import begin_accumulation, end_accumulation, last_micro_batch
from flops import flops_per_sample, peak_tflops
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from train_step_bench import model_config, shape_for, synthetic_batch


def build(cfg: Any, setting: str, device: torch.device, world: int, chunk: int) -> tuple[Any, Any]:
    torch.manual_seed(0)
    with torch.device(device):
        model = DSparkDraftModel(cfg, loss_chunk_size=chunk)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    if setting in ("runtime", "runtime_defer"):
        shard_model(model, list(model.layers), device, world, compute)
        return model, build_optimizer(model, OptimizerConfig(learning_rate=6e-4, weight_decay=0.0))
    if setting == "old_runtime":
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("dp",))
        policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        for layer in model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        params = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(params, lr=6e-4, weight_decay=0.0)
    mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("dp",))
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    frozen = {model.embed_tokens.weight, model.lm_head.weight}
    for p in frozen:
        p.data = p.data.to(compute)
    reshard = setting != "lean_noreshard"
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=6e-4, weight_decay=0.0, fused=device.type == "cuda")
    return model, opt


def opt_step(model: Any, opt: Any) -> None:
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    opt.step()
    opt.zero_grad(set_to_none=True)


def make_micro(model: Any, batch: dict[str, torch.Tensor], world: int) -> Any:
    def micro() -> None:
        out = model(batch["input_ids"], batch["hidden"], batch["loss_mask"], batch["anchors"], batch["keep"],
                    batch["last"], denominator=1000.0, world_size=world)
        out.loss.backward()

    return micro


def timed(device: torch.device, fn: Any) -> float:
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--settings", default="runtime_defer,runtime,lean_noreshard")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--opt-steps", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=512)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10),
                            device_id=device if device.type == "cuda" else None)
    s = shape_for(args.tiny)
    cfg = model_config(s)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = synthetic_batch(cfg, s.seq, device, dtype, seed=100 + rank)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    accum = max(1, args.global_batch // world)
    results: list[dict[str, Any]] = []
    for setting in [x for x in args.settings.split(",") if x]:
        started = time.perf_counter()
        try:
            model, opt = build(cfg, setting, device, world, 1024 if not args.tiny else 40)

            micro = make_micro(model, batch, world)

            defer = setting.endswith("_defer")
            for _ in range(args.warmup):
                if defer:
                    begin_accumulation(model)
                    micro()
                    last_micro_batch(model)
                micro()
                if defer:
                    end_accumulation(model)
                opt_step(model, opt)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            warm_s = time.perf_counter() - started
            if defer:
                begin_accumulation(model)
            mb = [timed(device, micro) for _ in range(args.steps)]
            last = statistics.median(mb)
            if defer:
                last_micro_batch(model)
                last = timed(device, micro)
                end_accumulation(model)
            opt_step(model, opt)  # apply (and clear) the timed micro-batches' accumulated gradients
            op = []
            for _ in range(args.opt_steps):
                micro()
                op.append(timed(device, functools.partial(opt_step, model, opt)))
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            local_stats = torch.tensor([statistics.median(mb), statistics.median(op), peak, max(mb) - min(mb), last],
                                       dtype=torch.float64, device=device)
            gathered = [torch.zeros_like(local_stats) for _ in range(world)]
            dist.all_gather(gathered, local_stats)
            rows = torch.stack(gathered).cpu()
            mb_s, op_s, peak_g = float(rows[:, 0].max()), float(rows[:, 1].max()), float(rows[:, 2].max())
            last_s = float(rows[:, 4].max())
            extra_s = max(0.0, last_s - mb_s)
            sps = 1.0 / (mb_s + (extra_s + op_s) / accum)
            res = {
                "setting": setting, "world": world, "device": name, "micro_batch_s": mb_s, "optimizer_s": op_s,
                "micro_batch_spread_s": float(rows[:, 3].max()), "last_micro_batch_s": last_s,
                "samples_per_s_per_gpu": sps, "samples_per_s_per_gpu_opt_each": 1.0 / (last_s + op_s),
                "mfu": sps * flops_per_sample(s) / (peak_tflops(name) * 1e12), "peak_gib_max_rank": peak_g,
                "per_rank_micro_batch_s": rows[:, 0].tolist(), "accumulation": accum, "warmup_s": warm_s,
            }
            del model, opt
        except Exception as exc:  # keep the other settings
            res = {"setting": setting, "world": world, "error": f"{type(exc).__name__}: {exc}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results.append(res)
        if rank == 0:
            print(json.dumps(res), flush=True)
    if rank == 0:
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            suffix = "_tiny" if args.tiny else ""
            (Path(args.out) / f"fsdp_w{world}{suffix}.json").write_text(json.dumps(results, indent=2))
        print(f"\n{'setting':15s} {'GPUs':>4s} {'mb ms':>7s} {'opt ms':>7s} {'smp/s/GPU':>9s} {'MFU':>6s} "
              f"{'peak GiB':>8s}")
        for r in results:
            if "error" in r:
                print(f"{r['setting']:15s} {world:4d} ERROR {r['error'][:90]}")
            else:
                print(f"{r['setting']:15s} {world:4d} {r['micro_batch_s'] * 1e3:7.1f} {r['optimizer_s'] * 1e3:7.1f} "
                      f"{r['samples_per_s_per_gpu']:9.2f} {r['mfu']:6.1%} {r['peak_gib_max_rank']:8.2f}")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
