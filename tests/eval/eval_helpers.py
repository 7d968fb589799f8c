"""Helpers of the evaluation tests: drafts for a tiny target, the reference greedy output, an oracle drafter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model.api import build_draft_model
from dspark_trainer.model.draft import DSparkDraftModel
from transformers import AutoModelForCausalLM


def load(target: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()


def draft_for(target: Path, seed: int = 0, **options: Any) -> DSparkDraftModel:
    opts: dict[str, Any] = {"num_draft_layers": 2, "block_size": 4, "num_anchors": 8, "markov_rank": 16,
                            "num_target_layers_captured": 3}
    opts.update(options)
    return build_draft_model(target, DraftOptions(**opts), seed=seed).eval()


def prompts(n: int, seed: int = 0, vocab: int = 500) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (int(torch.randint(3, 14, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def greedy_reference(model: Any, prompt: list[int], max_new: int, stop: set[int]) -> list[int]:
    """transformers' own greedy generation of one prompt (the ids after the prompt)."""
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(stop), pad_token_id=0)
    return list(out[0, len(prompt):].tolist())
