"""The learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest
from dspark_trainer.runtime.lr_schedule import lr_at, warmup_steps


def test_warmup_then_cosine_to_minimum() -> None:
    total, peak, low = 100, 1e-3, 1e-4
    warm = warmup_steps(total, 0.04)
    assert warm == 4
    lrs = [lr_at(s, total, warm, peak, low) for s in range(total)]
    assert lrs[:4] == pytest.approx([peak / 4, peak / 2, 3 * peak / 4, peak])
    assert lrs[4] == pytest.approx(peak)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] == pytest.approx(low + (peak - low) * 0.5 * (1 + math.cos(math.pi * 95 / 96)))
    assert lr_at(total, total, warm, peak, low) == pytest.approx(low)
    assert lr_at(10 * total, total, warm, peak, low) == pytest.approx(low)


def test_no_warmup() -> None:
    assert warmup_steps(10, 0.0) == 0
    assert lr_at(0, 10, 0, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(5, 10, 0, 1.0, 0.0) == pytest.approx(0.5)
