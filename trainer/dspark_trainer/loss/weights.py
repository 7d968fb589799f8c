"""Position weights and the loss denominator.

``w[b, a, j] = eval_mask[b, a, j] * exp(-j / gamma)``. Every loss term is ``sum(w * term) / D`` where
``D`` is ``sum(w)`` over every micro-batch of one optimizer step on every data-parallel rank. ``w``
depends only on the loss mask and the anchors, so ``D`` is known before any forward pass:
compute ``local_denominator`` for each micro-batch of the step, then ``global_denominator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from dspark_trainer.model.anchors import decay_weights, position_weights
from dspark_trainer.model.anchors import eval_mask as build_eval_mask

__all__ = ["decay_weights", "global_denominator", "local_denominator", "position_weights"]


def local_denominator(
    loss_mask: torch.Tensor, anchors: torch.Tensor, block_keep_mask: torch.Tensor, block_size: int, gamma: float
) -> torch.Tensor:
    """``sum(w)`` of one micro-batch, a float64 scalar on the inputs' device."""
    em = build_eval_mask(loss_mask, anchors, block_keep_mask, block_size)
    return position_weights(em, gamma).double().sum()


def global_denominator(
    local_sums: torch.Tensor | float | Sequence[torch.Tensor | float],
    *,
    device: torch.device | None = None,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Sum the local denominators of one optimizer step over micro-batches, then over ranks (all-reduce SUM).

    Returns a float64 scalar tensor (on ``device``: with NCCL pass the rank's CUDA device). Every rank
    must call it (it is a collective when a process group is initialised with more than one rank).
    """
    items = local_sums if isinstance(local_sums, Sequence) else [local_sums]
    total = torch.zeros((), dtype=torch.float64, device=device)
    for item in items:
        total += torch.as_tensor(item, dtype=torch.float64).to(total.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total
