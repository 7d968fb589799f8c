"""The evaluation a job asks for after training (`evaluation:` in the job config): real speculative decoding
of the exported draft with its target (`dspark eval`'s library), on rank 0 once the draft is exported.

The result goes to the progress board and the job's `status.progress.evaluation` (tau, acceptance, speedup,
calibration) and to Prometheus (`dspark_eval_spec_*`). A failed evaluation never fails the run: training
succeeded and the draft is exported; the failure is reported in `evaluation.message`.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from dspark_trainer.config.job import JobConfig

log = logging.getLogger("dspark.trainer")


def evaluation_fields(report: Any, prompt_set: str) -> dict[str, Any]:
    """status.progress.evaluation from an EvalReport (pure)."""
    out: dict[str, Any] = {
        "prompt_set": prompt_set,
        "num_prompts": report.num_prompts,
        "temperature": report.temperature,
        "tau": report.tau,
        "accept_rate": list(report.accept_rate),
        "speedup": report.speedup,
        "tokens_per_second": report.spec_tokens_per_second,
        "baseline_tokens_per_second": report.target_tokens_per_second,
    }
    if report.calibration is not None:
        out["confidence_ece"] = report.calibration.ece
    return out


def evaluate_export(
    config: JobConfig, target_dir: str, draft_dir: str, registry: CollectorRegistry
) -> dict[str, Any] | None:
    """Run the configured evaluation on the export with the target in target_dir (the trainer's resolved one); its
    status fields (None when none is configured)."""
    spec = config.evaluation
    if spec is None:
        return None
    try:
        from dspark_trainer.eval import EvalOptions, run_evaluation, set_eval_gauges

        options = EvalOptions(batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens, seed=spec.seed,
                              template_kwargs=dict(config.dataset.chat_template_kwargs) or {"enable_thinking": False},
                              progress=False)
        log.info("evaluating the draft by speculative decoding: %d prompts of %s at temperature %g",
                 spec.num_prompts, spec.prompt_set, spec.temperature)
        report = run_evaluation(draft_dir, target_dir, spec.prompt_set, spec.num_prompts, spec.temperature,
                                device=config.runtime.device, target_dtype=config.target.dtype, options=options)
        set_eval_gauges(registry, [report])
    except Exception as exc:
        log.exception("the evaluation of the draft failed (the draft is exported all the same)")
        return {"prompt_set": spec.prompt_set, "message": f"{type(exc).__name__}: {exc}"[:4000]}
    fields = evaluation_fields(report, spec.prompt_set)
    log.info("evaluation: tau %.3f, speedup %.2fx, acceptance %s", report.tau, report.speedup,
             " ".join(f"{a:.3f}" for a in report.accept_rate))
    return fields
