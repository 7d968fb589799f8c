"""``run_evaluation`` / ``Evaluator``: real speculative decoding of a draft with its target on a prompt set.

The target is loaded once per ``Evaluator``; each ``evaluate`` call decodes the prompts with the target alone
(the baseline, cached per prompt set, temperature and batch size) and with the draft, and, for drafts with a
confidence head, once more with the confidence-threshold early stop. Prompts go through the target's chat
template with the generation prompt (``enable_thinking=False`` by default) and are decoded in batches of
``batch_size`` (sorted by length, so a batch holds prompts of similar lengths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dspark_trainer.eval.calibration import calibration
from dspark_trainer.eval.checkpoints import load_eval_draft
from dspark_trainer.eval.decoding import DecodeResult, SpecStats, speculative_generate, target_generate
from dspark_trainer.eval.prompts import Prompt, load_prompts, with_system_prompt
from dspark_trainer.eval.report import EarlyStop, EvalReport
from dspark_trainer.eval.target import DTYPES, load_target
from dspark_trainer.model.draft import DSparkDraftModel


@dataclass
class EvalOptions:
    """How prompts are decoded (shared by every evaluation of one ``Evaluator``)."""

    batch_size: int = 1
    max_new_tokens: int = 256
    seed: int = 0
    confidence_threshold: float = 0.5  # early-stop pass; 0 disables it
    system_prompt: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    max_prompt_tokens: int = 2048
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ValueError(f"--confidence-threshold must be in [0, 1), got {self.confidence_threshold}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible")
    return torch.device(device)


def check_compatible(draft: DSparkDraftModel, target: Any) -> None:
    """The draft must have been built for this target's sizes and layers."""
    cfg, tcfg = draft.config, target.config
    problems = []
    if cfg.vocab_size != tcfg.vocab_size:
        problems.append(f"vocabulary {cfg.vocab_size} != the target's {tcfg.vocab_size}")
    if cfg.hidden_size != tcfg.hidden_size:
        problems.append(f"hidden size {cfg.hidden_size} != the target's {tcfg.hidden_size}")
    if cfg.num_target_layers != tcfg.num_hidden_layers:
        problems.append(f"it was built for {cfg.num_target_layers} target layers, the target has "
                        f"{tcfg.num_hidden_layers}")
    if problems:
        raise ValueError("--draft does not fit --target: " + "; ".join(problems))


class Evaluator:
    """A loaded target and its tokenizer; evaluates drafts on prompt sets."""

    def __init__(self, target_dir: str | Path, *, device: str = "auto", target_dtype: str = "bfloat16",
                 options: EvalOptions | None = None) -> None:
        from transformers import AutoTokenizer

        self.target_dir = str(target_dir)
        self.device = resolve_device(device)
        self.options = options or EvalOptions()
        self.target_dtype = target_dtype
        self.model = load_target(target_dir, target_dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
        self.stop_ids = self._stop_ids()
        self._baselines: dict[tuple[Any, ...], DecodeResult] = {}
        # first calls pay for CUDA/cuBLAS initialisation: keep that out of the timed runs
        target_generate(self.model, [[0, 1, 2, 3]], max_new_tokens=4, temperature=0.0, stop_ids=set())

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model.generation_config, "eos_token_id", None), self.model.config.eos_token_id,
                    self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, list | tuple):
                ids.update(int(x) for x in src)
        return ids

    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Token ids of each prompt through the chat template (prompts longer than the limit are cut from the left)."""
        out = []
        for p in prompts:
            messages = with_system_prompt(p, self.options.system_prompt).messages
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **self.options.template_kwargs)
            ids = list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])
            out.append(ids[-self.options.max_prompt_tokens:])
        return out

    def load_draft(self, draft_dir: str | Path, checkpoint: str | Path | None = None) -> DSparkDraftModel:
        dtype = DTYPES[self.target_dtype] if self.device.type == "cuda" else torch.float32
        draft = load_eval_draft(draft_dir, checkpoint=checkpoint, device=self.device, dtype=dtype,
                                target_dir=self.target_dir)
        check_compatible(draft, self.model)
        speculative_generate(self.model, draft, [[0, 1, 2, 3]], max_new_tokens=4, temperature=0.0, stop_ids=set())
        return draft

    def _batches(self, ids: list[list[int]]) -> list[list[int]]:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        size = self.options.batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _run(self, ids: list[list[int]], temperature: float, desc: str, draft: DSparkDraftModel | None,
             threshold: float = 0.0) -> DecodeResult:
        from tqdm import tqdm

        gen = torch.Generator(device=self.device).manual_seed(self.options.seed)
        outputs: list[list[int]] = [[] for _ in ids]
        stats = SpecStats(block_size=draft.config.block_size) if draft is not None else None
        seconds = 0.0
        with tqdm(total=len(ids), desc=desc, unit="prompt", disable=not self.options.progress,
                  dynamic_ncols=True) as bar:
            for batch in self._batches(ids):
                prompts = [ids[i] for i in batch]
                if draft is None:
                    res = target_generate(self.model, prompts, max_new_tokens=self.options.max_new_tokens,
                                          temperature=temperature, stop_ids=self.stop_ids, generator=gen,
                                          progress=bar.update)
                else:
                    res = speculative_generate(self.model, draft, prompts, max_new_tokens=self.options.max_new_tokens,
                                               temperature=temperature, stop_ids=self.stop_ids,
                                               confidence_threshold=threshold, generator=gen, progress=bar.update)
                    assert stats is not None and res.stats is not None
                    _merge(stats, res.stats)
                seconds += res.seconds
                for i, out in zip(batch, res.outputs, strict=True):
                    outputs[i] = out
        return DecodeResult(outputs, seconds, stats)

    def baseline(self, prompt_set: str, ids: list[list[int]], temperature: float) -> DecodeResult:
        key = (prompt_set, len(ids), temperature, self.options.batch_size, self.options.max_new_tokens)
        if key not in self._baselines:
            self._baselines[key] = self._run(ids, temperature, f"target {prompt_set} T={temperature:g}", None)
        return self._baselines[key]

    def evaluate(self, draft: DSparkDraftModel, draft_name: str, prompt_set: str, num_prompts: int | None,
                 temperature: float) -> EvalReport:
        """Decode the prompt set with the target alone and with ``draft``; the report of the comparison."""
        if temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {temperature}")
        prompts = load_prompts(prompt_set, num_prompts)
        ids = self.encode(prompts)
        base = self.baseline(prompt_set, ids, temperature)
        spec = self._run(ids, temperature, f"{draft_name} {prompt_set} T={temperature:g}", draft)
        stats = spec.stats
        assert stats is not None
        speed = spec.tokens_per_second
        report = EvalReport(
            draft=draft_name, target=Path(self.target_dir).name, prompt_set=prompt_set, num_prompts=len(prompts),
            temperature=temperature, batch_size=self.options.batch_size, max_new_tokens=self.options.max_new_tokens,
            block_size=draft.config.block_size, seed=self.options.seed, tau=stats.tau, accept_rate=stats.accept_rate,
            rounds=stats.rounds, mean_proposal=stats.mean_proposal, generated_tokens=spec.generated_tokens,
            spec_tokens_per_second=speed, target_tokens_per_second=base.tokens_per_second,
            speedup=speed / base.tokens_per_second if base.tokens_per_second > 0 else math.nan,
        )
        if temperature == 0:
            report.greedy_match = sum(a == b for a, b in zip(spec.outputs, base.outputs, strict=True)) / len(ids)
        if draft.confidence_head is not None:
            report.calibration = calibration(stats.conf_pred, stats.conf_label)
            threshold = self.options.confidence_threshold
            if threshold > 0:
                early = self._run(ids, temperature, f"{draft_name} {prompt_set} T={temperature:g} stop@{threshold:g}",
                                  draft, threshold)
                assert early.stats is not None
                report.early_stop = EarlyStop(
                    threshold=threshold, tau=early.stats.tau, accept_rate=early.stats.accept_rate,
                    mean_proposal=early.stats.mean_proposal, tokens_per_second=early.tokens_per_second,
                    speedup=early.tokens_per_second / base.tokens_per_second if base.tokens_per_second else math.nan,
                )
        return report


def _merge(total: SpecStats, part: SpecStats) -> None:
    total.rounds += part.rounds
    total.committed += part.committed
    total.proposed += part.proposed
    for j in range(total.block_size):
        total.proposed_beyond[j] += part.proposed_beyond[j]
        total.accepted_beyond[j] += part.accepted_beyond[j]
        total.conf_pred[j].extend(part.conf_pred[j])
        total.conf_label[j].extend(part.conf_label[j])


def run_evaluation(
    draft_dir: str | Path,
    target_dir: str | Path,
    prompt_set: str,
    num_prompts: int | None = None,
    temperature: float = 0.0,
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    target_dtype: str = "bfloat16",
    options: EvalOptions | None = None,
) -> EvalReport:
    """Evaluate the draft in ``draft_dir`` (an exported DSpark draft; ``checkpoint`` a training checkpoint of it)
    with the target in ``target_dir`` on ``prompt_set`` (a built-in set name or a jsonl path)."""
    evaluator = Evaluator(target_dir, device=device, target_dtype=target_dtype, options=options)
    draft = evaluator.load_draft(draft_dir, checkpoint)
    return evaluator.evaluate(draft, Path(draft_dir).name, prompt_set, num_prompts, temperature)
