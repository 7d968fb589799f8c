"""A tiny random target on disk, for tests and the local demo (no downloads).

``make_tiny_qwen3_target(path)`` writes a Hugging Face directory: ``config.json`` + ``model.safetensors``
of a randomly initialised ``Qwen3ForCausalLM`` (``make_tiny_target(path, arch="llama" | "qwen2")`` the same
for a Llama or Qwen2 target), and a byte-level BPE ``PreTrainedTokenizerFast``
(``tokenizer.json``, ``tokenizer_config.json`` with a Qwen3-style chat template). The tokenizer is
trained on the bundled demo conversations, has the Qwen3 special tokens, and stops below the model's
vocabulary size, so its length is a free id: the draft's default mask token (as 151669 is for Qwen3).
The result depends only on the arguments (same files for the same arguments).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dspark_trainer.assets import DEMO_DATASET

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Qwen3-style: <|im_start|>role\n...<|im_end|>\n; the last assistant turn carries an empty reasoning
# block, and the generation prompt adds one when thinking is disabled.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.last -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Ids between the tokenizer's last token and the model's vocabulary size stay free (mask token etc.).
RESERVED_IDS = 8


def _corpus() -> list[str]:
    """Training text of the tokenizer: the demo conversations as the chat template renders them."""
    texts: list[str] = []
    for line in DEMO_DATASET.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        for msg in json.loads(line).get("messages", []):
            content = msg.get("content")
            if isinstance(content, str):
                texts.append(f"<|im_start|>{msg.get('role', 'user')}\n{content}<|im_end|>\n")
    return texts


def make_tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``vocab_size - 8`` tokens (specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    size = vocab_size - RESERVED_IDS
    if size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS) + RESERVED_IDS} for a byte-level tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<think>", "</think>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


TARGET_ARCHS = ("qwen3", "qwen2", "llama")


def make_tiny_target(
    path: str | Path,
    *,
    arch: str = "qwen3",
    hidden_size: int = 64,
    num_layers: int = 8,
    vocab_size: int = 512,
    seed: int = 0,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 4096,
) -> Path:
    """Write a tiny random target (``arch``: qwen3, qwen2 or llama; model + tokenizer) to ``path``.

    ``head_dim = hidden_size // num_attention_heads``; ``intermediate_size`` defaults to ``2 * hidden_size``.
    The tokenizer has ``vocab_size - 8`` tokens, so ``len(tokenizer)`` is a free embedding row (the
    draft's default mask token id). Global RNG state is left untouched.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if arch not in TARGET_ARCHS:
        raise ValueError(f"arch must be one of {TARGET_ARCHS}, got {arch!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(vocab_size)
    tokenizer.save_pretrained(str(out))
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }
    classes: dict[str, tuple[Any, Any]] = {
        "qwen3": (Qwen3Config, Qwen3ForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }
    config_cls, model_cls = classes[arch]
    if arch != "qwen2":
        common["head_dim"] = hidden_size // num_attention_heads
    cfg = config_cls(**common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
    model.save_pretrained(str(out))
    return out


def make_tiny_qwen3_target(path: str | Path, **kwargs: Any) -> Path:
    """``make_tiny_target(path, arch="qwen3", ...)`` (same arguments otherwise)."""
    return make_tiny_target(path, arch="qwen3", **kwargs)
