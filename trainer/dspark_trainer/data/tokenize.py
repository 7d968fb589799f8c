"""Chat-template tokenization with a loss mask on assistant tokens only.

The conversation is rendered once with the tokenizer's chat template (or the configured one) and
tokenized with character offsets. The character span of assistant turn ``i`` is found by rendering
prefixes: it starts where ``messages[:i]`` rendered with the generation prompt ends and stops where
``messages[:i+1]`` ends, so the span covers what the model generates (reasoning block, content, the
end-of-turn token). Templates that render history differently from the last turn (Qwen3 drops the
empty reasoning block of earlier turns) fall back to locating the turn's content in the full
text, plus the end-of-turn text that follows it. Trailing whitespace after the turn is not trained.
A token is a loss token when its characters overlap an assistant span.

Three options make the mask match other conventions (the DeepSpec reference supervises all three):
``default_system_prompt`` puts a system message first when a conversation has none; ``empty_think_block``
("as_rendered", "supervised", "unsupervised") extends the span back over an empty ``<think></think>`` block
just before it (the generation prompt's) or cuts one at its start; ``supervise_turn_end_whitespace`` keeps the
whitespace after the end-of-turn token in the span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids and the 0/1 assistant loss mask, truncated to the maximum length."""

    input_ids: list[int]
    loss_mask: list[int]

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


def load_chat_template(value: str | None) -> str | None:
    """``dataset.chatTemplate``: an inline Jinja template, or the path of a file holding one."""
    if value is None:
        return None
    if "{" not in value and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


EMPTY_THINK_AT_START = re.compile(r"<think>\s*</think>\s*")
EMPTY_THINK_AT_END = re.compile(r"<think>\s*</think>\s*$")


class ChatTokenizer:
    """Turns OpenAI-style ``messages`` into ``(input_ids, loss_mask)``."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        chat_template: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
        *,
        default_system_prompt: str | None = None,
        empty_think_block: str = "as_rendered",
        supervise_turn_end_whitespace: bool = False,
    ) -> None:
        if empty_think_block not in ("as_rendered", "supervised", "unsupervised"):
            raise ValueError(f"dataset.emptyThinkBlock: as_rendered, supervised or unsupervised, "
                             f"got {empty_think_block!r}")
        self.default_system_prompt = default_system_prompt
        self.empty_think_block = empty_think_block
        self.supervise_turn_end_whitespace = supervise_turn_end_whitespace
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat_template = load_chat_template(chat_template)
        self.template_kwargs = dict(template_kwargs or {})
        if self.chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError("dataset.chatTemplate: the tokenizer has no chat template; give one")

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as the model sees it."""
        text = self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=self.chat_template,
            **self.template_kwargs,
        )
        return str(text)

    def assistant_spans(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of the assistant turns."""
        full = self.render(messages)
        spans: list[tuple[int, int]] = []
        search_from = 0
        for i, msg in enumerate(messages):
            if msg.get("role") != "assistant":
                continue
            span = self._span_by_prefix(messages, i, full) or self._span_by_content(messages, i, full, search_from)
            if span is None:
                continue
            start, end = self._adjust(full, *span)
            if end > start:
                spans.append((start, end))
                search_from = end
        return full, spans

    def _adjust(self, full: str, start: int, end: int) -> tuple[int, int]:
        """Apply the empty-think-block and end-of-turn whitespace options to a span."""
        if self.empty_think_block == "supervised":
            before = EMPTY_THINK_AT_END.search(full, 0, start)
            if before is not None:
                start = before.start()
        elif self.empty_think_block == "unsupervised":
            at = EMPTY_THINK_AT_START.match(full, start, end)
            if at is not None:
                start = at.end()
        if not self.supervise_turn_end_whitespace:
            end = start + len(full[start:end].rstrip())
        return start, end

    def with_system_prompt(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` with the default system prompt first, when one is set and there is no system message."""
        if self.default_system_prompt and (not messages or messages[0].get("role") != "system"):
            return [{"role": "system", "content": self.default_system_prompt}, *messages]
        return messages

    def _span_by_prefix(self, messages: list[dict[str, Any]], i: int, full: str) -> tuple[int, int] | None:
        if i == 0:
            return None
        prefix = self.render(messages[:i], add_generation_prompt=True)
        upto = self.render(messages[: i + 1])
        if len(upto) > len(prefix) and full.startswith(prefix) and full.startswith(upto):
            return len(prefix), len(upto)
        return None

    def _span_by_content(
        self, messages: list[dict[str, Any]], i: int, full: str, search_from: int
    ) -> tuple[int, int] | None:
        content = _content_text(messages[i]).strip()
        if not content:
            return None
        start = full.find(content, search_from)
        if start < 0:
            return None
        end = start + len(content)
        # The end-of-turn text the template puts after the content (e.g. "<|im_end|>").
        try:
            upto = self.render(messages[: i + 1])
        except Exception:  # a template may refuse to end on an assistant turn
            return start, end
        at = upto.rfind(content)
        if at >= 0:
            suffix = upto[at + len(content) :]
            if suffix and full.startswith(suffix, end):
                end += len(suffix)
        return start, end

    def encode(self, messages: list[dict[str, Any]]) -> EncodedConversation:
        """Token ids and loss mask, truncated to ``max_length``."""
        text, spans = self.assistant_spans(self.with_system_prompt(messages))
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            mask = [int(any(s < span_end and e > span_start for span_start, span_end in spans))
                    for s, e in enc["offset_mapping"]]
        else:
            ids, mask = self._encode_piecewise(text, spans)
        return EncodedConversation(input_ids=ids[: self.max_length], loss_mask=mask[: self.max_length])

    def _encode_piecewise(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Slow tokenizers have no offsets: tokenize the text between span boundaries piece by piece."""
        ids: list[int] = []
        mask: list[int] = []
        pos = 0
        for start, end in [*spans, (len(text), len(text))]:
            for piece, flag in ((text[pos:start], 0), (text[start:end], 1)):
                if piece:
                    piece_ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
                    ids.extend(piece_ids)
                    mask.extend([flag] * len(piece_ids))
            pos = end
        return ids, mask
