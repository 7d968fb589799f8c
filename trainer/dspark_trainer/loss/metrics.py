"""Metrics from statistics summed over micro-batches and data-parallel ranks (docs/model.md, "Metrics")."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from dspark_trainer.loss.dspark_loss import LossWeights


@dataclass
class DSparkMetrics:
    """Training/eval metrics of one step or one evaluation.

    ``loss`` holds the weighted means of the computed terms (``ce``, ``l1``, ``confidence``) and
    ``total = sum(alpha * term)``. ``accept_rate[j]`` is the mean ``c*`` at slot ``j``; ``tau`` the mean
    over valid blocks of ``1 + sum_j prod_{i<=j} c*_i``; ``acc[j]`` the top-1 agreement at slot ``j``
    and ``sim_acc_len = sum_j prod_{i<=j} acc[i]``. Confidence calibration: mean ``|sigmoid(conf) - c*|``,
    mean ``sigmoid(conf) - c*`` and mean ``prod sigmoid(conf) - prod c*`` (cumulative products). Values
    needing the target's distribution (accept rate, tau, calibration) are None without it.
    """

    loss: dict[str, float]
    accept_rate: list[float] | None
    tau: float | None
    acc: list[float]
    sim_acc_len: float
    confidence_abs_error: float | None = None
    confidence_bias: float | None = None
    confidence_cum_bias: float | None = None
    num_positions: float = 0.0
    num_blocks: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def summarize(stats: Mapping[str, torch.Tensor], alphas: LossWeights) -> DSparkMetrics:
    """Turn summed statistics (see ``dspark_loss``) into metrics."""
    pos = stats["positions"].double().cpu()
    count = float(pos.sum())
    wsum = float(stats["weight_sum"])
    loss: dict[str, float] = {}
    total = 0.0
    for name, alpha in alphas.by_term():
        key = f"{name}_sum"
        if key in stats:
            loss[name] = _ratio(float(stats[key]), wsum)
            if alpha > 0:
                total += alpha * loss[name]
    loss["total"] = total
    acc = [_ratio(float(a), float(n)) for a, n in zip(stats["acc_sum"].cpu(), pos, strict=True)]
    sim = 0.0
    prod = 1.0
    for a in acc:
        prod *= a
        sim += prod
    accept = None
    tau = None
    if "accept_sum" in stats:
        accept = [_ratio(float(a), float(n)) for a, n in zip(stats["accept_sum"].cpu(), pos, strict=True)]
        tau = _ratio(float(stats["tau_sum"]), float(stats["blocks"]))
    metrics = DSparkMetrics(
        loss=loss, accept_rate=accept, tau=tau, acc=acc, sim_acc_len=sim,
        num_positions=count, num_blocks=float(stats["blocks"]),
    )
    if "conf_abs_sum" in stats:
        metrics.confidence_abs_error = _ratio(float(stats["conf_abs_sum"]), count)
        metrics.confidence_bias = _ratio(float(stats["conf_bias_sum"]), count)
        metrics.confidence_cum_bias = _ratio(float(stats["conf_cum_bias_sum"]), count)
    if not all(math.isfinite(v) for v in loss.values()):
        metrics.extra["nonfinite_loss"] = 1.0
    return metrics


def accumulate_stats(total: dict[str, torch.Tensor], stats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add one micro-batch's statistics into ``total`` (in place; returns it)."""
    for key, value in stats.items():
        v = value.detach().double()
        total[key] = total[key] + v if key in total else v.clone()
    return total


def all_reduce_stats(
    stats: dict[str, torch.Tensor], *, device: torch.device | None = None, group: dist.ProcessGroup | None = None
) -> dict[str, torch.Tensor]:
    """Sum statistics over ranks (one flat all-reduce; every rank must hold the same keys and shapes)."""
    if not stats or not (dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
        return dict(stats)
    keys = sorted(stats)
    flat = torch.cat([stats[k].detach().double().reshape(-1).to(device or stats[k].device) for k in keys])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for k in keys:
        n = stats[k].numel()
        out[k] = flat[offset : offset + n].view(stats[k].shape)
        offset += n
    return out
