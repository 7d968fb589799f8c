"""Real speculative-decoding evaluation of DSpark drafts with their targets (``dspark eval``).

Entry points: ``run_evaluation(draft_dir, target_dir, prompt_set, num_prompts, temperature, ...) -> EvalReport``
(``EvalReport.to_json()``, ``format_table(reports)``), ``Evaluator`` for several drafts / sets with one loaded
target, and ``set_eval_gauges(registry, reports)`` for Prometheus. See docs/eval.md.
"""

from dspark_trainer.eval.api import EvalOptions, Evaluator, run_evaluation
from dspark_trainer.eval.metrics import EvalGauges, set_eval_gauges
from dspark_trainer.eval.report import EarlyStop, EvalReport, format_table

__all__ = [
    "EarlyStop",
    "EvalGauges",
    "EvalOptions",
    "EvalReport",
    "Evaluator",
    "format_table",
    "run_evaluation",
    "set_eval_gauges",
]
