"""Calibration of the confidence head against real acceptance (pure functions on flat lists of floats).

A prediction is the cumulative product of the per-slot confidences ``prod_{i<=j} sigmoid(conf_i)`` (the
predicted probability that drafts ``0..j`` are all accepted); its label is 1 when they were. ``ece`` is the
expected calibration error over equal-width bins (weighted by bin counts), ``auroc`` the probability that a
random accepted prefix scores above a random rejected one (ties count half), ``brier`` the mean squared error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def ece(pred: Sequence[float], label: Sequence[float], bins: int = 20) -> float:
    """Expected calibration error with ``bins`` equal-width bins on [0, 1]; NaN without data."""
    if len(pred) != len(label):
        raise ValueError(f"{len(pred)} predictions but {len(label)} labels")
    if not pred:
        return math.nan
    count = [0] * bins
    p_sum = [0.0] * bins
    y_sum = [0.0] * bins
    for p, y in zip(pred, label, strict=True):
        b = min(bins - 1, max(0, int(p * bins)))
        count[b] += 1
        p_sum[b] += p
        y_sum[b] += y
    return sum(abs(p_sum[b] - y_sum[b]) for b in range(bins) if count[b]) / len(pred)


def auroc(pred: Sequence[float], label: Sequence[float]) -> float:
    """Area under the ROC curve by ranks (ties get their average rank); NaN unless both classes occur."""
    pos = sum(1 for y in label if y >= 0.5)
    neg = len(label) - pos
    if pos == 0 or neg == 0:
        return math.nan
    order = sorted(range(len(pred)), key=lambda i: pred[i])
    ranks = [0.0] * len(pred)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and pred[order[j + 1]] == pred[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, label, strict=True) if y >= 0.5)
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def brier(pred: Sequence[float], label: Sequence[float]) -> float:
    """Mean squared error of the predictions; NaN without data."""
    if not pred:
        return math.nan
    return sum((p - y) ** 2 for p, y in zip(pred, label, strict=True)) / len(pred)


@dataclass
class Calibration:
    """Overall and per-slot calibration of the confidence head's prefix predictions."""

    ece: float
    auroc: float
    brier: float
    mean_prediction: float
    mean_label: float
    count: int
    per_position: list[dict[str, float]]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def calibration(pred: Sequence[Sequence[float]], label: Sequence[Sequence[float]], bins: int = 20) -> Calibration:
    """``pred[j]`` / ``label[j]``: the predictions and labels of slot ``j``; overall values pool every slot."""
    flat_p = [p for slot in pred for p in slot]
    flat_y = [y for slot in label for y in slot]
    per = []
    for j, (ps, ys) in enumerate(zip(pred, label, strict=True)):
        per.append({"position": float(j), "count": float(len(ps)), "ece": ece(ps, ys, bins), "auroc": auroc(ps, ys),
                    "brier": brier(ps, ys), "mean_prediction": _mean(ps), "mean_label": _mean(ys)})
    return Calibration(ece=ece(flat_p, flat_y, bins), auroc=auroc(flat_p, flat_y), brier=brier(flat_p, flat_y),
                       mean_prediction=_mean(flat_p), mean_label=_mean(flat_y), count=len(flat_p), per_position=per)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
