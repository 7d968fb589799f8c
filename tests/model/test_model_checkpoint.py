"""The DSpark checkpoint format: exact config fields, weight names and shapes as an SGLang DSPARK server
loads them, bit-identical round trips, and reading only the embedding/LM head of a target."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model import (
    build_draft_model,
    evaluate_batch,
    export_checkpoint,
    export_draft,
    load_draft,
    load_vocab_weights,
    read_checkpoint_config,
)
from dspark_trainer.model.target_weights import tensor_locations
from model_helpers import make_batch
from safetensors import safe_open
from safetensors.torch import save_file

OPTS = {"block_size": 4, "num_draft_layers": 2, "num_anchors": 8, "markov_rank": 16}


def _layer_names(i: int) -> set[str]:
    p = f"layers.{i}."
    return {p + f"self_attn.{x}_proj.weight" for x in "qkvo"} | {
        p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight",
        p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight",
        p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
    }


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_export_format_is_what_sglang_loads(tiny_target: Path, tmp_path: Path, kind: str) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS, markov_head_type=kind))
    out = export_draft(model, tmp_path / "draft")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    target_cfg = json.loads((tiny_target / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3DSparkModel"] and cfg["model_type"] == "qwen3"
    assert cfg["num_hidden_layers"] == 2 and cfg["num_target_layers"] == target_cfg["num_hidden_layers"] == 8
    assert cfg["block_size"] == 4 and cfg["num_anchors"] == 8 and cfg["tie_word_embeddings"] is False
    assert cfg["mask_token_id"] == 504  # len(tokenizer): the first free id, like Qwen3's 151669
    assert cfg["target_layer_ids"] == [1, 2, 3, 4, 5]
    assert cfg["markov_rank"] == 16 and cfg["markov_head_type"] == kind
    assert cfg["enable_confidence_head"] is True and cfg["confidence_head_with_markov"] is True
    assert cfg["dflash_config"] == {"target_layer_ids": [1, 2, 3, 4, 5], "mask_token_id": 504, "block_size": 4}
    assert "speculators_model_type" not in cfg
    assert cfg["layer_types"] == ["full_attention"] * 2
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "vocab_size", "rms_norm_eps", "max_position_embeddings"):
        assert cfg[key] == target_cfg[key], key
    assert cfg["rope_theta"] == target_cfg["rope_parameters"]["rope_theta"]

    hid, vocab, rank = 64, 512, 16
    want = {
        "embed_tokens.weight": [vocab, hid], "lm_head.weight": [vocab, hid], "norm.weight": [hid],
        "fc.weight": [hid, 5 * hid], "hidden_norm.weight": [hid],
        "markov_head.markov_w1.weight": [vocab, rank], "markov_head.markov_w2.weight": [vocab, rank],
        "confidence_head.proj.weight": [1, hid + rank], "confidence_head.proj.bias": [1],
    }
    if kind == "gated":
        want |= {"markov_head.gate_proj.weight": [rank, hid + rank], "markov_head.gate_proj.bias": [rank]}
    if kind == "rnn":
        want |= {"markov_head.joint_proj.weight": [3 * rank, 2 * rank + hid], "markov_head.joint_proj.bias": [3 * rank]}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        shapes = {n: list(f.get_slice(n).get_shape()) for n in names}
    assert names == set(want) | _layer_names(0) | _layer_names(1)
    for name, shape in want.items():
        assert shapes[name] == shape, name
    assert shapes["layers.0.self_attn.q_proj.weight"] == [64, hid]  # 4 heads x head_dim 16
    assert shapes["layers.0.self_attn.k_proj.weight"] == [32, hid]  # 2 kv heads
    assert shapes["layers.1.self_attn.q_norm.weight"] == [16]


def test_round_trip_is_bit_identical(tiny_target: Path, tmp_path: Path) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS, markov_head_type="rnn"), seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    export_draft(model, tmp_path / "a")
    back = load_draft(tmp_path / "a")
    assert back.config.model_dump(exclude={"base_config"}) == model.config.model_dump(exclude={"base_config"})
    for name, t in back.state_dict().items():
        assert t.dtype == state[name].dtype and torch.equal(t, state[name]), name
    assert not back.embed_tokens.weight.requires_grad and not back.lm_head.weight.requires_grad
    export_draft(back, tmp_path / "b")
    for fname in ("config.json", "model.safetensors"):
        assert (tmp_path / "a" / fname).read_bytes() == (tmp_path / "b" / fname).read_bytes(), fname
    # a bf16 export reads back as the same bf16 bits; the confidence head stays float32 (as both engines run it)
    export_draft(model, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    bf = load_draft(tmp_path / "bf16")
    for name, t in bf.state_dict().items():
        want = torch.float32 if name.startswith("confidence_head.") else torch.bfloat16
        assert t.dtype == want and torch.equal(t, state[name].to(want)), name


def test_exported_files_are_readable_by_other_users(tiny_target: Path, tmp_path: Path) -> None:
    """A serving pod often runs as another user than the trainer: the files get 0666 minus the umask."""
    model = build_draft_model(tiny_target, DraftOptions(**OPTS), seed=0)
    old = os.umask(0o022)
    try:
        export_draft(model, tmp_path / "draft")
    finally:
        os.umask(old)
    for fname in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "draft" / fname).stat().st_mode) == 0o644, fname


def test_export_refuses_a_state_that_does_not_fit(tiny_target: Path, tmp_path: Path) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS))
    state = dict(model.state_dict())
    state["markov_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown"):
        export_checkpoint(state, model.config, tmp_path / "x")
    state.pop("markov_head.extra.weight")
    state["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        export_checkpoint(state, model.config, tmp_path / "x")


def test_build_uses_the_targets_frozen_vocab_weights(tiny_target: Path) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS))
    with safe_open(str(tiny_target / "model.safetensors"), framework="pt") as f:
        assert torch.equal(model.embed_tokens.weight, f.get_tensor("model.embed_tokens.weight"))
        assert torch.equal(model.lm_head.weight, f.get_tensor("lm_head.weight"))
    assert not model.embed_tokens.weight.requires_grad and not model.lm_head.weight.requires_grad
    # deterministic initialisation from the seed
    again = build_draft_model(tiny_target, DraftOptions(**OPTS))
    for (n, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_init_from_copies_the_trainable_weights(tiny_target: Path, tmp_path: Path) -> None:
    first = build_draft_model(tiny_target, DraftOptions(**OPTS), seed=1)
    export_draft(first, tmp_path / "init")
    second = build_draft_model(tiny_target, DraftOptions(**OPTS, init_from=str(tmp_path / "init")), seed=2)
    for name, t in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], t), name
    with pytest.raises(ValueError, match="do not fit"):
        opts = DraftOptions(**{**OPTS, "num_draft_layers": 3}, init_from=str(tmp_path / "init"))
        build_draft_model(tiny_target, opts)


def test_sharded_prefixed_and_tied_targets(tmp_path: Path) -> None:
    embed = torch.randn(10, 4)
    head = torch.randn(10, 4)
    other = torch.randn(3, 3)
    # sharded with an index
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"model.embed_tokens.weight": embed, "model.layers.0.x": other}, str(sharded / "a.safetensors"))
    save_file({"lm_head.weight": head}, str(sharded / "b.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "a.safetensors", "model.layers.0.x": "a.safetensors",
        "lm_head.weight": "b.safetensors"}}))
    e, h = load_vocab_weights(sharded)
    assert torch.equal(e, embed) and torch.equal(h, head)
    assert tensor_locations(sharded)["lm_head.weight"].name == "b.safetensors"
    # no prefix, no lm_head: tied
    tied = tmp_path / "tied"
    tied.mkdir()
    save_file({"embed_tokens.weight": embed}, str(tied / "model.safetensors"))
    e, h = load_vocab_weights(tied)
    assert torch.equal(e, embed) and torch.equal(h, embed) and h.data_ptr() != e.data_ptr()
    # tie_word_embeddings in the config wins over a stray lm_head
    cfg_tied = tmp_path / "cfg_tied"
    cfg_tied.mkdir()
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": head}, str(cfg_tied / "model.safetensors"))
    (cfg_tied / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    assert torch.equal(load_vocab_weights(cfg_tied)[1], embed)
    with pytest.raises(FileNotFoundError):
        load_vocab_weights(tmp_path)


def test_only_the_two_tensors_are_read(tiny_target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors

    read: list[str] = []
    real = safetensors.safe_open

    class Spy:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.inner = real(*args, **kwargs)  # type: ignore[arg-type]

        def __enter__(self) -> Spy:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.__exit__(*exc)

        def keys(self) -> list[str]:
            return list(self.inner.keys())

        def get_tensor(self, name: str) -> torch.Tensor:
            read.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr("dspark_trainer.model.target_weights.safe_open", Spy)
    load_vocab_weights(tiny_target)
    assert sorted(read) == ["lm_head.weight", "model.embed_tokens.weight"]


def test_public_api_on_a_loaded_draft(tiny_target: Path, tmp_path: Path) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS))
    export_draft(model, tmp_path / "d")
    draft = load_draft(tmp_path / "d")
    assert read_checkpoint_config(tmp_path / "d") == draft.config
    batch = make_batch(draft.config, bsz=2, seq_len=30)
    out, metrics = evaluate_batch(draft, batch.input_ids, batch.hidden, batch.loss_mask, batch.anchors, batch.keep,
                                  batch.last_hidden, return_logits=True)
    assert out.logits is not None and out.logits.shape == (2, batch.anchors.shape[1], 4, 512)
    assert metrics.tau is not None and 1.0 <= metrics.tau <= 5.0 and len(metrics.acc) == 4
    out_ce, metrics_ce = evaluate_batch(draft, batch.input_ids, batch.hidden, batch.loss_mask, batch.anchors)
    assert metrics_ce.tau is None and set(out_ce.terms) == {"ce"}
    torch.testing.assert_close(out_ce.terms["ce"], out.terms["ce"])
