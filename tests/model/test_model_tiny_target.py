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


def test_llama_and_qwen2_tiny_targets_feed_a_draft(tmp_path: Path) -> None:
    import pytest
    import torch
    from dspark_trainer.config.draft import DraftOptions
    from dspark_trainer.local.tiny_model import make_tiny_target
    from dspark_trainer.model.anchors import sample_anchors
    from dspark_trainer.model.api import build_draft_model
    from dspark_trainer.runtime.sources import select_target_hidden
    from transformers import AutoModelForCausalLM

    for arch, tied in (("llama", True), ("qwen2", False)):
        target = make_tiny_target(tmp_path / arch, arch=arch, num_layers=6, tie_word_embeddings=tied)
        hf = AutoModelForCausalLM.from_pretrained(str(target))
        assert hf.config.model_type == arch
        opts = DraftOptions(num_draft_layers=1, block_size=3, num_anchors=4, markov_rank=8,
                            num_target_layers_captured=3)
        model = build_draft_model(target, opts)
        assert model.config.mask_token_id == 504 and model.config.target_layer_ids == [1, 2, 3]
        # the frozen vocabulary weights are the target's (tied: the embedding is the LM head)
        assert torch.equal(model.embed_tokens.weight, hf.get_input_embeddings().weight)
        assert torch.equal(model.lm_head.weight, hf.get_output_embeddings().weight)
        ids = torch.randint(0, 500, (1, 20), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = hf.model(input_ids=ids, output_hidden_states=True)
        hidden = select_target_hidden(out.hidden_states, model.config.target_layer_ids)
        mask = torch.ones_like(ids)
        anchors, keep = sample_anchors(mask, 4, seeds=[0])
        res = model(ids, hidden, mask, anchors, keep, out.last_hidden_state)
        assert res.loss is not None and torch.isfinite(res.loss), arch
    with pytest.raises(ValueError, match="arch must be one of"):
        make_tiny_target(tmp_path / "x", arch="gpt2")
