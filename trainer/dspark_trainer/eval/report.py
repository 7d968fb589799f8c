"""The result of one evaluation (one draft, prompt set and temperature): JSON and a readable table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dspark_trainer.eval.calibration import Calibration


@dataclass
class EarlyStop:
    """Speculative decoding whose proposals stop before the first slot with confidence below ``threshold``."""

    threshold: float
    tau: float
    accept_rate: list[float]
    mean_proposal: float
    tokens_per_second: float
    speedup: float


@dataclass
class EvalReport:
    """Real speculative decoding of ``num_prompts`` prompts of ``prompt_set`` at ``temperature``.

    ``tau`` is the mean number of tokens a round commits (accepted drafts + 1); ``accept_rate[k]`` the rounds
    that accepted more than ``k`` drafts over those that proposed more than ``k``. Throughputs are generated
    tokens per second of wall time at ``batch_size``, for the target alone and for speculative decoding, on the
    same prompts; ``speedup`` is their ratio. ``greedy_match`` (temperature 0) is the fraction of prompts whose
    speculative output equals the target-only output token for token.
    """

    draft: str
    target: str
    prompt_set: str
    num_prompts: int
    temperature: float
    batch_size: int
    max_new_tokens: int
    block_size: int
    seed: int
    tau: float
    accept_rate: list[float]
    rounds: int
    mean_proposal: float
    generated_tokens: int
    spec_tokens_per_second: float
    target_tokens_per_second: float
    speedup: float
    greedy_match: float | None = None
    calibration: Calibration | None = None
    early_stop: EarlyStop | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN becomes null)."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(reports: Sequence[EvalReport]) -> str:
    """One row per report: tau, per-position acceptance, throughput, speedup, calibration, early stop."""
    if not reports:
        return "(no results)"
    k = max(r.block_size for r in reports)
    head = ["draft", "prompts", "T", "batch", "tau", *[f"acc@{j}" for j in range(k)], "target tok/s",
            "spec tok/s", "speedup", "ECE", "AUROC", "Brier", "stop tau", "stop speedup"]
    rows = []
    for r in reports:
        cal = r.calibration
        es = r.early_stop
        acc = [_fmt(a) for a in r.accept_rate] + ["-"] * (k - len(r.accept_rate))
        rows.append([
            r.draft, f"{r.prompt_set} ({r.num_prompts})", _fmt(r.temperature, 1), str(r.batch_size), _fmt(r.tau),
            *acc, _fmt(r.target_tokens_per_second, 1), _fmt(r.spec_tokens_per_second, 1), _fmt(r.speedup),
            _fmt(cal.ece if cal else None, 3), _fmt(cal.auroc if cal else None, 3), _fmt(cal.brier if cal else None, 3),
            _fmt(es.tau if es else None), _fmt(es.speedup if es else None),
        ])
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
