"""Options that reproduce the DeepSpec reference where this project chose differently: the loss denominator of
gradient accumulation, the chat-template loss mask, and loss weights carried by the exported draft."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError
from dspark_trainer.data.tokenize import ChatTokenizer
from dspark_trainer.runtime.step import micro_batch_denominators

MESSAGES = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4."}]


class _Api:
    def denominator(self, prepared: Any) -> torch.Tensor:
        return torch.tensor(float(prepared))


def test_step_and_micro_batch_denominators() -> None:
    device = torch.device("cpu")
    denoms, total = micro_batch_denominators(_Api(), [3.0, 1.0], device, "step")  # type: ignore[arg-type]
    assert float(total) == 4.0 and [float(d) for d in denoms] == [4.0, 4.0]
    # the reference: micro-batch mean over its own denominator, divided by the 2 accumulation steps
    denoms, total = micro_batch_denominators(_Api(), [3.0, 1.0], device, "micro_batch")  # type: ignore[arg-type]
    assert float(total) == 4.0 and [float(d) for d in denoms] == [6.0, 2.0]
    with pytest.raises(ValueError, match="lossNormalization"):
        micro_batch_denominators(_Api(), [1.0], device, "mean")  # type: ignore[arg-type]


def test_loss_normalization_is_a_checked_field() -> None:
    base = {"target": {"model": "/t"}, "dataset": {"path": "/d"}}
    assert JobConfig.from_mapping(base).schedule.loss_normalization == "step"
    cfg = JobConfig.from_mapping({**base, "schedule": {"lossNormalization": "micro_batch"}})
    assert cfg.schedule.loss_normalization == "micro_batch"
    with pytest.raises(ConfigError, match=r"schedule\.lossNormalization"):
        JobConfig.from_mapping({**base, "schedule": {"lossNormalization": "mean"}})


def _supervised(tok: ChatTokenizer) -> str:
    enc = tok.encode(MESSAGES)
    return str(tok.tokenizer.decode([t for t, m in zip(enc.input_ids, enc.loss_mask, strict=True) if m]))


@pytest.fixture(scope="module")
def qwen_tokenizer() -> Any:
    from dspark_trainer.local.tiny_model import make_tiny_tokenizer

    return make_tiny_tokenizer(512)


def test_chat_mask_options(qwen_tokenizer: Any) -> None:
    kwargs = {"enable_thinking": False}  # the generation prompt holds the empty think block
    default = ChatTokenizer(qwen_tokenizer, 256, template_kwargs=kwargs)
    assert _supervised(default) == "4.<|im_end|>"
    ref = ChatTokenizer(qwen_tokenizer, 256, template_kwargs=kwargs, empty_think_block="supervised",
                        supervise_turn_end_whitespace=True, default_system_prompt="You are a helpful assistant.")
    assert _supervised(ref) == "<think>\n\n</think>\n\n4.<|im_end|>\n"
    text = qwen_tokenizer.decode(ref.encode(MESSAGES).input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user")
    # thinking not disabled: the template renders the block inside the turn, as_rendered supervises it
    rendered = ChatTokenizer(qwen_tokenizer, 256)
    assert _supervised(rendered).startswith("<think>")
    never = ChatTokenizer(qwen_tokenizer, 256, empty_think_block="unsupervised")
    assert _supervised(never) == "4.<|im_end|>"
    with pytest.raises(ValueError, match="emptyThinkBlock"):
        ChatTokenizer(qwen_tokenizer, 256, empty_think_block="maybe")


def test_loss_weights_survive_export_and_import(tmp_path: Path) -> None:
    from dspark_trainer.config.draft import DraftOptions
    from dspark_trainer.local.tiny_model import make_tiny_target
    from dspark_trainer.model.api import build_draft_model, export_draft, load_draft

    target = make_tiny_target(tmp_path / "t", arch="llama", num_layers=6)
    opts = DraftOptions(num_draft_layers=1, block_size=3, num_target_layers_captured=3, markov_rank=4,
                        ce_alpha=0.3, l1_alpha=0.5, confidence_alpha=0.25, gamma=2.5)
    back = load_draft(export_draft(build_draft_model(target, opts), tmp_path / "d"))
    cfg = back.config
    assert (cfg.ce_alpha, cfg.l1_alpha, cfg.confidence_alpha, cfg.gamma) == (0.3, 0.5, 0.25, 2.5)
    assert back.loss_weights.confidence == 0.25
