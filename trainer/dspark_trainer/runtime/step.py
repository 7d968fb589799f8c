"""One optimizer step over a rank's micro-batches, with the global-denominator loss.

1. Every micro-batch is prepared (anchors sampled); the local denominators are summed over the
   micro-batches and all-reduced over ranks BEFORE any backward pass.
2. Each micro-batch's loss (its weighted sum / global denominator x world size) is backpropagated;
   FSDP2 averages the gradients over ranks, so the update equals one big batch's. By default the
   parameters are gathered once per step and the gradients reduced once, after the last micro-batch
   (the micro-batches before it accumulate unsharded fp32 gradients); with
   ``runtime.reduceGradientsEveryMicroBatch`` every micro-batch gathers, reduces and reshards (least memory).
3. Gradients are clipped, the optimizer and the schedule step, and the statistics are all-reduced.

``schedule.lossNormalization: micro_batch`` instead normalises like the DeepSpec reference: each micro-batch's
weighted sum is divided by that micro-batch's own denominator (summed over ranks) and by the number of
micro-batches of the step (``loss / accumulation_steps``), so micro-batches with few supervised positions
weigh as much as full ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import FSDPModule

from dspark_trainer.data.batching import MicroBatch
from dspark_trainer.loss.metrics import accumulate_stats, all_reduce_stats
from dspark_trainer.loss.weights import global_denominator
from dspark_trainer.runtime.dist import all_reduce_sum
from dspark_trainer.runtime.draft_api import DraftAPI, Quality
from dspark_trainer.runtime.fsdp import clip_gradients

MIN_DENOMINATOR = 1e-6


@dataclass
class StepResult:
    quality: Quality
    grad_norm: float
    learning_rate: float
    denominator: float
    applied: bool  # False when the update was skipped for a non-finite gradient norm


def summed_stats(totals: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Statistics summed over ranks (one collective on ``device``), on the CPU."""
    return {k: v.cpu() for k, v in all_reduce_stats(dict(totals), device=device).items()}


def micro_batch_denominators(
    api: DraftAPI, prepared: Sequence[object], device: torch.device, mode: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(denominator of each micro-batch's loss, the step's global denominator)``, both float64 on ``device``.

    ``step``: every micro-batch uses the global one (sum over micro-batches and ranks). ``micro_batch``: micro-batch
    ``i`` uses its own sum over ranks times the number of micro-batches (one all-reduce of the vector)."""
    local = torch.stack([api.denominator(p).detach().to(device=device, dtype=torch.float64).reshape(())
                         for p in prepared]) if prepared else torch.zeros(0, dtype=torch.float64, device=device)
    per = all_reduce_sum(local) if len(prepared) else local
    total = per.sum()
    if mode == "step":
        return [total for _ in prepared], total
    if mode != "micro_batch":
        raise ValueError(f"schedule.lossNormalization must be step or micro_batch, got {mode!r}")
    return [d * len(prepared) for d in per], total


def begin_accumulation(model: torch.nn.Module) -> None:
    """FSDP2 for a step's micro-batches before the last: no gradient reduction (unsharded gradients
    accumulate in fp32), and the parameters, once gathered by the first forward, stay unsharded through
    every forward and backward of the step (no all-gather per micro-batch). No-op for a plain module."""
    if not isinstance(model, FSDPModule):
        return
    model.set_requires_gradient_sync(False)
    model.set_reshard_after_backward(False)
    for module in model.modules():
        if isinstance(module, FSDPModule) and module is not model:
            module.set_reshard_after_forward(False, recurse=False)


def last_micro_batch(model: torch.nn.Module) -> None:
    """The step's last backward reduces the accumulated gradients and reshards the parameters."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)


def end_accumulation(model: torch.nn.Module) -> None:
    """Back to FSDP2's defaults (layers reshard after forward: evaluation forwards keep no gathered weights)."""
    if not isinstance(model, FSDPModule):
        return
    last_micro_batch(model)
    for module in model.modules():
        if isinstance(module, FSDPModule) and module is not model:
            module.set_reshard_after_forward(True, recurse=False)


def train_step(
    model: torch.nn.Module,
    api: DraftAPI,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: Sequence[MicroBatch],
    *,
    device: torch.device,
    world_size: int,
    grad_clip: float,
    defer_gradient_sync: bool = False,
    loss_normalization: str = "step",
) -> StepResult:
    """``defer_gradient_sync``: gather the parameters once and reduce the gradients once per step (see
    ``begin_accumulation``) instead of once per micro-batch. ``loss_normalization``: see the module docstring."""
    model.train()
    lr = float(optimizer.param_groups[0]["lr"])
    prepared = [api.prepare(model, mb) for mb in micro_batches]
    denoms, denom = micro_batch_denominators(api, prepared, device, loss_normalization)
    totals: dict[str, torch.Tensor] = {}
    if defer_gradient_sync:
        begin_accumulation(model)
    try:
        for i, p in enumerate(prepared):
            if defer_gradient_sync and i == len(prepared) - 1:
                last_micro_batch(model)
            denom_for_loss = denoms[i].clamp(min=MIN_DENOMINATOR).to(torch.float32)
            loss, stats = api.loss_and_stats(model, p, denom_for_loss, world_size)
            loss.backward()
            accumulate_stats(totals, stats)
    finally:
        if defer_gradient_sync:
            end_accumulation(model)
    grad_norm = clip_gradients(model, grad_clip)
    applied = math.isfinite(grad_norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    summed = summed_stats(totals, device)
    return StepResult(
        quality=api.summarize(summed, float(denom)),
        grad_norm=grad_norm,
        learning_rate=lr,
        denominator=float(denom),
        applied=applied,
    )


@torch.no_grad()
def eval_batches(
    model: torch.nn.Module,
    api: DraftAPI,
    micro_batches: Sequence[MicroBatch],
    counted: Sequence[bool],
    *,
    device: torch.device,
    world_size: int,
) -> Quality:
    """Metrics over micro-batches of every rank; batches with ``counted`` False only keep the ranks in
    step (every rank must run the same number of sharded forwards)."""
    model.eval()
    prepared = [api.prepare(model, mb) for mb in micro_batches]
    denom = global_denominator(
        [api.denominator(p).detach() for p, use in zip(prepared, counted, strict=True) if use], device=device
    )
    totals: dict[str, torch.Tensor] = {}
    for p, use in zip(prepared, counted, strict=True):
        _, stats = api.loss_and_stats(model, p, denom.clamp(min=MIN_DENOMINATOR).to(torch.float32), world_size)
        if use:
            accumulate_stats(totals, stats)
        elif not totals:
            accumulate_stats(totals, {k: torch.zeros_like(v) for k, v in stats.items()})
    model.train()
    return api.summarize(summed_stats(totals, device), float(denom))
