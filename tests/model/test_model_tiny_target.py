"""The tiny Qwen3 target builder: deterministic files, a working tokenizer and chat template, a free mask id."""

from __future__ import annotations

from pathlib import Path

from dspark_trainer.model.config import resolve_model_config_from_dir, tokenizer_size


def test_tiny_target_is_deterministic_and_complete(tiny_target: Path, tmp_path: Path) -> None:
    from dspark_trainer.local.tiny_model import make_tiny_qwen3_target

    again = make_tiny_qwen3_target(tmp_path / "again", num_layers=8)
    names = sorted(p.name for p in tiny_target.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny_target / name).read_bytes() == (again / name).read_bytes(), name


def test_tiny_target_loads_with_transformers(tiny_target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_target))
    assert 512 - 8 == len(tok) == tokenizer_size(tiny_target)
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        assert int(tok.convert_tokens_to_ids(special)) < len(tok)
    messages = [{"role": "user", "content": "What is 59 plus 12?"}, {"role": "assistant", "content": "71."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>user\nWhat is 59 plus 12?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n71.<|im_end|>\n"
    )
    prompt = str(tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) // 2  # BPE merges, not bytes
    model = AutoModelForCausalLM.from_pretrained(str(tiny_target))
    assert model.config.num_hidden_layers == 8 and model.config.vocab_size == 512
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    assert out.logits.shape == (1, len(ids), 512) and len(out.hidden_states) == 9


def test_draft_config_resolves_from_the_tiny_target(tiny_target: Path) -> None:
    from dspark_trainer.config.draft import DraftOptions

    cfg = resolve_model_config_from_dir(tiny_target, DraftOptions())
    assert cfg.mask_token_id == 504 and cfg.target_layer_ids == [1, 2, 3, 4, 5]
    assert (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 16, 4, 2)
