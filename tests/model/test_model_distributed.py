"""The loss and gradients of one optimizer step are the same on 1 process and on 2 (gloo), given the
global denominator and the world-size compensation of the gradient mean."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dspark_trainer.loss import accumulate_stats, all_reduce_stats, global_denominator, local_denominator, summarize
from dspark_trainer.util.net import free_port
from model_helpers import make_batch, make_model, tiny_config

SAMPLES = 4


def _step(rank: int, world: int, groups: list[list[int]]) -> tuple[float, dict[str, torch.Tensor], dict[str, float]]:
    """Micro-batches ``groups`` of this rank; returns (loss summed over ranks, mean-reduced grads, metrics)."""
    torch.set_num_threads(1)
    cfg = tiny_config(markov_head_type="gated")
    model = make_model(cfg)
    batch = make_batch(cfg, bsz=SAMPLES, seq_len=26)
    micro = [batch.select(g) for g in groups]
    local = [local_denominator(m.loss_mask, m.anchors, m.keep, cfg.block_size, cfg.gamma) for m in micro]
    denom = global_denominator(local)
    loss_sum = torch.zeros((), dtype=torch.float64)
    stats: dict[str, torch.Tensor] = {}
    for m in micro:
        out = model(*m.args(), denominator=float(denom), world_size=world)
        assert out.loss is not None
        out.loss.backward()
        loss_sum += out.loss.detach().double() / world
        accumulate_stats(stats, out.stats)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1:
        for g in grads.values():  # what FSDP2/DDP do: reduce with a mean over ranks
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            g /= world
        dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
        stats = all_reduce_stats(stats)
    metrics = summarize(stats, model.loss_weights)
    flat = {"tau": float(metrics.tau or 0.0), "total": metrics.loss["total"], "acc0": metrics.acc[0]}
    return float(loss_sum), grads, flat


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        per_rank = SAMPLES // world
        mine = list(range(rank * per_rank, (rank + 1) * per_rank))
        groups = [[i] for i in mine]  # two micro-batches of one sample per rank
        loss, grads, metrics = _step(rank, world, groups)
        if rank == 0:
            torch.save({"loss": loss, "grads": grads, "metrics": metrics}, Path(out_dir) / "result.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path: Path) -> None:
    ref_loss, ref_grads, ref_metrics = _step(0, 1, [list(range(SAMPLES))])
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "result.pt")
    assert abs(got["loss"] - ref_loss) <= 1e-5 * abs(ref_loss)
    for name, g in ref_grads.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    for key, value in ref_metrics.items():
        assert abs(got["metrics"][key] - value) <= 1e-6 * max(1.0, abs(value)), key
