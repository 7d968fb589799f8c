"""Chat-template tokenization and the assistant loss mask."""

from __future__ import annotations

from typing import Any

import pytest
from dspark_trainer.data.tokenize import ChatTokenizer
from trainer_helpers import make_char_tokenizer


def masked_text(tok: ChatTokenizer, messages: list[dict[str, Any]]) -> tuple[str, str]:
    enc = tok.encode(messages)
    ids = enc.input_ids
    inner = tok.tokenizer
    full = "".join(inner.decode([i]) for i in ids)
    loss = "".join(inner.decode([i]) for i, m in zip(ids, enc.loss_mask, strict=True) if m)
    return full, loss


def test_single_turn_mask_covers_reasoning_block_content_and_end_token(char_tokenizer: Any) -> None:
    tok = ChatTokenizer(char_tokenizer, max_length=512)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    full, loss = masked_text(tok, msgs)
    assert full == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n"
    assert loss == "<think>\n\n</think>\n\nHello!<|im_end|>"


def test_template_kwargs_move_the_reasoning_block_into_the_prompt(char_tokenizer: Any) -> None:
    tok = ChatTokenizer(char_tokenizer, max_length=512, template_kwargs={"enable_thinking": False})
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    _, loss = masked_text(tok, msgs)
    assert loss == "Hello!<|im_end|>"


def test_multi_turn_history_turns_use_the_content_fallback(char_tokenizer: Any) -> None:
    tok = ChatTokenizer(char_tokenizer, max_length=512)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "Second."},
    ]
    full, loss = masked_text(tok, msgs)
    assert "First answer.<|im_end|>" in full
    assert loss == "First answer.<|im_end|><think>\n\n</think>\n\nSecond.<|im_end|>"


def test_no_loss_on_user_text_equal_to_an_answer(char_tokenizer: Any) -> None:
    tok = ChatTokenizer(char_tokenizer, max_length=512)
    msgs = [{"role": "user", "content": "yes"}, {"role": "assistant", "content": "yes"}]
    _, loss = masked_text(tok, msgs)
    assert loss.endswith("yes<|im_end|>") and loss.count("yes") == 1


def test_truncation_to_max_length(char_tokenizer: Any) -> None:
    tok = ChatTokenizer(char_tokenizer, max_length=20)
    enc = tok.encode([{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y"}])
    assert len(enc.input_ids) == len(enc.loss_mask) == 20
    assert enc.num_loss_tokens == 0


def test_slow_path_matches_fast_path(char_tokenizer: Any) -> None:
    tok = ChatTokenizer(char_tokenizer, max_length=512)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "r"}, {"role": "assistant", "content": "more"}]
    fast = tok.encode(msgs)
    text, spans = tok.assistant_spans(msgs)
    ids, mask = tok._encode_piecewise(text, spans)
    assert ids == fast.input_ids and mask == fast.loss_mask


def test_inline_template_and_missing_template() -> None:
    plain = make_char_tokenizer(template="")
    plain.chat_template = None
    with pytest.raises(ValueError, match=r"dataset\.chatTemplate"):
        ChatTokenizer(plain, max_length=64)
    tpl = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}<|im_end|>{% endfor %}" \
          "{% if add_generation_prompt %}[assistant]{% endif %}"
    tok = ChatTokenizer(plain, max_length=64, chat_template=tpl)
    _, loss = masked_text(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}])
    assert loss == "ok<|im_end|>"
