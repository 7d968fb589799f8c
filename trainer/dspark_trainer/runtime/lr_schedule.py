"""Learning-rate schedule: linear warm-up to the peak, then cosine decay to the minimum.

``step`` counts optimizer updates already done (0 for the first update)."""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length: ``ceil(ratio * total)``, at most ``total``."""
    return min(total_steps, math.ceil(warmup_ratio * total_steps))


def lr_at(step: int, total_steps: int, warmup: int, peak: float, minimum: float) -> float:
    """The learning rate of update number ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / decay_steps))
    return minimum + (peak - minimum) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(step: int, total_steps: int, warmup: int, peak: float, minimum: float) -> float:
    """``lr_at / peak``: the multiplier a ``torch.optim.lr_scheduler.LambdaLR`` wants."""
    return lr_at(step, total_steps, warmup, peak, minimum) / peak
