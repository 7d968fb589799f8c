"""Prometheus gauges of speculative-decoding evaluations, set on a registry the caller owns.

Every gauge has the labels ``draft``, ``prompt_set`` and ``temperature``. The names use the prefix
``dspark_eval_spec`` (the trainer's own registry already has ``dspark_eval_tau`` etc. for its held-out
evaluation, which is simulated from the target's distribution, not decoded):

``_tau``, ``_accept_rate{position}``, ``_speedup``, ``_tokens_per_second{mode=target|speculative}``,
``_greedy_match``, ``_prompts``, ``_calibration_ece``, ``_calibration_auroc``, ``_calibration_brier``,
``_early_stop_tau``, ``_early_stop_speedup``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Gauge

from dspark_trainer.eval.report import EvalReport

PREFIX = "dspark_eval_spec"
LABELS = ("draft", "prompt_set", "temperature")


class EvalGauges:
    """The gauges on one registry; ``update`` sets them from reports (call it again to overwrite)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = PREFIX) -> None:
        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{prefix}_{name}", doc, [*LABELS, *extra], registry=registry)

        self.tau = gauge("tau", "Mean tokens per speculative round (accepted drafts + 1).")
        self.accept_rate = gauge("accept_rate", "Rounds accepting more than k drafts / rounds proposing more than k.",
                                 ("position",))
        self.speedup = gauge("speedup", "Speculative over target-only generated tokens per second.")
        self.tokens_per_second = gauge("tokens_per_second", "Generated tokens per second.", ("mode",))
        self.greedy_match = gauge("greedy_match", "Fraction of prompts whose temperature-0 speculative output "
                                  "equals the target's.")
        self.prompts = gauge("prompts", "Prompts evaluated.")
        self.ece = gauge("calibration_ece", "Expected calibration error of the confidence head's prefix predictions.")
        self.auroc = gauge("calibration_auroc", "AUROC of the confidence head's prefix predictions.")
        self.brier = gauge("calibration_brier", "Brier score of the confidence head's prefix predictions.")
        self.early_tau = gauge("early_stop_tau", "Tau with the confidence-threshold early stop.")
        self.early_speedup = gauge("early_stop_speedup", "Speedup with the confidence-threshold early stop.")

    def update(self, reports: Sequence[EvalReport]) -> None:
        for r in reports:
            key = {"draft": r.draft, "prompt_set": r.prompt_set, "temperature": f"{r.temperature:g}"}
            self.tau.labels(**key).set(r.tau)
            for j, value in enumerate(r.accept_rate):
                self.accept_rate.labels(**key, position=str(j)).set(value)
            self.speedup.labels(**key).set(r.speedup)
            self.tokens_per_second.labels(**key, mode="target").set(r.target_tokens_per_second)
            self.tokens_per_second.labels(**key, mode="speculative").set(r.spec_tokens_per_second)
            self.prompts.labels(**key).set(r.num_prompts)
            if r.greedy_match is not None:
                self.greedy_match.labels(**key).set(r.greedy_match)
            if r.calibration is not None:
                for gauge, value in ((self.ece, r.calibration.ece), (self.auroc, r.calibration.auroc),
                                     (self.brier, r.calibration.brier)):
                    if not math.isnan(value):
                        gauge.labels(**key).set(value)
            if r.early_stop is not None:
                self.early_tau.labels(**key).set(r.early_stop.tau)
                self.early_speedup.labels(**key).set(r.early_stop.speedup)


_GAUGES: dict[int, tuple[CollectorRegistry, EvalGauges]] = {}


def set_eval_gauges(registry: CollectorRegistry, reports: Sequence[EvalReport], prefix: str = PREFIX) -> EvalGauges:
    """Set the evaluation gauges on ``registry`` from ``reports`` (gauges are created on the first call)."""
    entry = _GAUGES.get(id(registry))
    if entry is None or entry[0] is not registry:
        entry = (registry, EvalGauges(registry, prefix))
        _GAUGES[id(registry)] = entry
    entry[1].update(reports)
    return entry[1]
