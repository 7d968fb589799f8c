"""Draft configuration: default target layers, validation with clear errors, resolution from a target config."""

from __future__ import annotations

import pytest
from dspark_trainer.config.draft import DraftOptions, default_target_layer_ids
from dspark_trainer.model.config import DSparkModelConfig, default_mask_token_id, resolve_model_config
from model_helpers import target_hf_config
from pydantic import ValidationError


def test_default_layer_ids_reproduce_the_published_choices() -> None:
    assert default_target_layer_ids(36) == [1, 9, 17, 25, 33]
    assert default_target_layer_ids(40) == [1, 10, 19, 28, 37]
    assert default_target_layer_ids(28) == [1, 7, 13, 19, 25]
    assert default_target_layer_ids(8) == [1, 2, 3, 4, 5]
    assert default_target_layer_ids(36, 1) == [18]
    for n in range(8, 80):
        ids = default_target_layer_ids(n)
        assert ids[0] == 1 and ids[-1] == n - 3 and ids == sorted(set(ids))


def test_default_layer_ids_refuse_too_small_targets() -> None:
    with pytest.raises(ValueError, match="too few"):
        default_target_layer_ids(6, 5)


def test_published_defaults() -> None:
    o = DraftOptions()
    assert (o.block_size, o.num_draft_layers, o.num_anchors, o.markov_rank) == (7, 5, 512, 256)
    assert (o.ce_alpha, o.l1_alpha, o.confidence_alpha, o.gamma) == (0.1, 0.9, 1.0, 4.0)
    assert o.markov_head_type == "vanilla" and o.enable_confidence_head and o.confidence_head_with_markov


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 0}, "block_size"),
        ({"markov_head_type": "lstm"}, "vanilla"),
        ({"target_layer_ids": [3, 3]}, "strictly increasing"),
        ({"target_layer_ids": [5, 2]}, "strictly increasing"),
        ({"target_layer_ids": [-2, 1]}, ">= -1"),
        ({"markov_rank": 0}, "enableConfidenceHead.*DFLASH"),
        ({"markov_rank": 0, "confidence_head_with_markov": False}, "enableConfidenceHead.*DFLASH"),
        ({"enable_confidence_head": False, "confidence_head_with_markov": False}, "confidenceAlpha"),
    ],
)
def test_invalid_options_are_rejected_with_the_field_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DraftOptions(**kwargs)  # type: ignore[arg-type]


def test_layer_ids_out_of_range_for_the_target() -> None:
    with pytest.raises(ValueError, match=r"out of range.*\[-1, 6\]"):
        resolve_model_config(target_hf_config(layers=8), DraftOptions(target_layer_ids=[1, 7], mask_token_id=5))
    cfg = resolve_model_config(target_hf_config(layers=8), DraftOptions(target_layer_ids=[-1, 6], mask_token_id=5))
    assert cfg.target_layer_ids == [-1, 6]


def test_resolve_takes_the_targets_sizes() -> None:
    hf = target_hf_config(hidden=48, layers=36, vocab=200)
    hf.pop("rope_theta")
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    cfg = resolve_model_config(hf, DraftOptions(mask_token_id=7))
    assert cfg.hidden_size == 48 and cfg.head_dim == 12 and cfg.num_key_value_heads == 2
    assert cfg.rope_theta == 1e6 and cfg.vocab_size == 200 and cfg.num_target_layers == 36
    assert cfg.target_layer_ids == [1, 9, 17, 25, 33] and cfg.num_captured_layers == 5


def test_unsupported_targets_are_refused() -> None:
    hf = target_hf_config()
    hf["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match="yarn"):
        resolve_model_config(hf, DraftOptions(mask_token_id=5))
    with pytest.raises(ValueError, match="model_type 'gemma3' is not supported"):
        resolve_model_config({**target_hf_config(), "model_type": "gemma3"}, DraftOptions(mask_token_id=5))
    with pytest.raises(ValueError, match="does not fit"):
        resolve_model_config(target_hf_config(vocab=96), DraftOptions(mask_token_id=96))


def test_default_mask_token() -> None:
    qwen = {**target_hf_config(vocab=151936)}
    assert default_mask_token_id(qwen, tokenizer_len=151669) == 151669
    assert default_mask_token_id(qwen) == 151669
    assert default_mask_token_id({**qwen, "mask_token_id": 12}) == 12
    with pytest.raises(ValueError, match="maskTokenId"):
        default_mask_token_id(target_hf_config(vocab=96), tokenizer_len=96)


def llama_hf_config() -> dict[str, object]:
    """SmolLM2-135M-Instruct's shape: Llama, tied embeddings, no head_dim key, RoPE in rope_parameters."""
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
        "num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
        "hidden_act": "silu", "max_position_embeddings": 8192, "tie_word_embeddings": True, "mlp_bias": False,
        "attention_bias": False,
    }


def test_llama_and_qwen2_targets_resolve_to_a_qwen3_draft() -> None:
    cfg = resolve_model_config(llama_hf_config(), DraftOptions(mask_token_id=16))
    assert (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads) == (576, 64, 9, 3)
    assert cfg.rope_theta == 100000.0 and cfg.target_layer_ids == [1, 8, 14, 20, 27]
    exported = cfg.to_checkpoint_config()
    assert exported["model_type"] == "qwen3" and exported["architectures"] == ["Qwen3DSparkModel"]
    assert exported["tie_word_embeddings"] is False and exported["hidden_act"] == "silu"
    qwen2 = {  # Qwen2.5-Coder-0.5B: no attention_bias key (q/k/v biases are implied), the draft has none
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
        "num_key_value_heads": 2, "num_hidden_layers": 24, "vocab_size": 151936, "rope_theta": 1e6,
        "hidden_act": "silu", "tie_word_embeddings": True,
    }
    cfg2 = resolve_model_config(qwen2, DraftOptions(), tokenizer_len=151665)
    assert cfg2.head_dim == 64 and not cfg2.attention_bias and cfg2.mask_token_id == 151665
    assert cfg2.target_layer_ids == [1, 6, 11, 16, 21]


def test_mask_token_for_a_tokenizer_that_fills_the_vocabulary() -> None:
    from dspark_trainer.model.config import TokenizerInfo

    specials = ((0, "<|endoftext|>"), (1, "<|im_start|>"), (2, "<|im_end|>"), (15, "<jupyter_script>"),
                (16, "<empty_output>"))
    info = TokenizerInfo(size=49152, special_tokens=specials, role_tokens=frozenset({"<|im_start|>", "<|im_end|>"}),
                         chat_template="{{ '<|im_start|>' }}...{{ '<empty_output>' }}")
    # the highest special token that is no role token and not in the chat template
    assert default_mask_token_id(llama_hf_config(), tokenizer=info) == 15
    assert default_mask_token_id(llama_hf_config(), tokenizer=TokenizerInfo(size=49152, mask_token_id=3)) == 3
    # a free row after the tokenizer wins over special tokens
    assert default_mask_token_id({**llama_hf_config(), "vocab_size": 49160}, tokenizer=info) == 49152
    with pytest.raises(ValueError, match=r"set draft\.maskTokenId"):
        default_mask_token_id(llama_hf_config(), tokenizer=TokenizerInfo(size=49152))


def test_dflash_is_the_special_case() -> None:
    cfg = resolve_model_config(target_hf_config(), DraftOptions.dflash().model_copy(update={"mask_token_id": 5}))
    assert cfg.markov_rank == 0 and not cfg.enable_confidence_head
    assert (cfg.ce_alpha, cfg.l1_alpha, cfg.confidence_alpha) == (1.0, 0.0, 0.0)
    assert not cfg.needs_target_logits


def test_checkpoint_config_round_trip() -> None:
    cfg = resolve_model_config(target_hf_config(), DraftOptions(mask_token_id=5, markov_head_type="rnn", markov_rank=4))
    back = DSparkModelConfig.from_checkpoint_config(cfg.to_checkpoint_config())
    assert back.model_dump(exclude={"base_config"}) == cfg.model_dump(exclude={"base_config"})
    assert back.to_checkpoint_config() == cfg.to_checkpoint_config()
