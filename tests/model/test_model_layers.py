"""The decoder layer and the heads against independent computations: transformers' Qwen3 decoder layer
(for the dual-source attention) and hand-written formulas (Markov heads, confidence head)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dspark_trainer.model.heads import ConfidenceHead, GatedMarkovHead, RNNMarkovHead, VanillaMarkovHead
from dspark_trainer.model.layers import DSparkDecoderLayer, rotary_cos_sin
from dspark_trainer.model.masks import build_attention_mask
from model_helpers import make_batch, make_model, target_hf_config, tiny_config


def test_layer_equals_hf_qwen3_layer_on_the_concatenated_sequence() -> None:
    """Our layer on (ctx, h) == HF Qwen3DecoderLayer on [ctx ; h] for the draft rows, when the context is
    already unit-RMS (so HF's input_layernorm, weight 1, leaves it unchanged) and the mask is DSpark's."""
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding

    cfg = tiny_config()
    hf_cfg = Qwen3Config(**{k: v for k, v in target_hf_config().items() if k not in ("model_type", "architectures")})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    ours = DSparkDecoderLayer(cfg)
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        ours.input_layernorm.weight.fill_(1.0)
    hf = Qwen3DecoderLayer(hf_cfg, layer_idx=0)
    missing = hf.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys
    seq_len, k = 11, cfg.block_size
    anchors = torch.tensor([[0, 4, 9]])
    keep = torch.tensor([[True, True, True]])
    num = anchors.shape[1]
    ctx = torch.randn(1, seq_len, cfg.hidden_size)
    ctx = ctx * torch.rsqrt(ctx.pow(2).mean(-1, keepdim=True))  # unit RMS
    h = torch.randn(1, num * k, cfg.hidden_size)
    positions = torch.cat([torch.arange(seq_len), (anchors[0].unsqueeze(-1) + torch.arange(k)).flatten()]).unsqueeze(0)
    cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta, torch.float32)
    mask = build_attention_mask(anchors, keep, seq_len, k, "dense")
    with torch.no_grad():
        got = ours(h, ctx, cos, sin, mask)
        rope = Qwen3RotaryEmbedding(hf_cfg)
        hf_cos, hf_sin = rope(h, positions)
        torch.testing.assert_close(hf_cos, cos)
        full = torch.cat([ctx, h], dim=1)
        allowed = torch.ones(1, 1, seq_len + num * k, seq_len + num * k, dtype=torch.bool).tril()
        assert mask.dense is not None
        allowed[:, :, seq_len:] = mask.dense
        additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        want = hf(full, attention_mask=additive, position_ids=positions, position_embeddings=(hf_cos, hf_sin))
        if isinstance(want, tuple):
            want = want[0]
    torch.testing.assert_close(got, want[:, seq_len:], rtol=2e-5, atol=2e-5)


def test_vanilla_head_formula() -> None:
    torch.manual_seed(0)
    head = VanillaMarkovHead(vocab_size=11, rank=3, hidden_size=5)
    prev = torch.tensor([[[1, 4, 4, 10]]])
    hid = torch.randn(1, 1, 4, 5)
    feats = head.features(head.prev_embedding(prev), hid)
    bias = head.bias(feats)
    w1, w2 = head.markov_w1.weight, head.markov_w2.weight  # [V, r], [V, r]
    for j in range(4):
        want = w2 @ w1[prev[0, 0, j]]
        torch.testing.assert_close(bias[0, 0, j], want)


def test_gated_head_formula() -> None:
    torch.manual_seed(1)
    head = GatedMarkovHead(vocab_size=11, rank=3, hidden_size=5)
    prev = torch.tensor([[[2, 7, 0]]])
    hid = torch.randn(1, 1, 3, 5)
    bias = head.bias(head.features(head.prev_embedding(prev), hid))
    w1, w2 = head.markov_w1.weight, head.markov_w2.weight
    gw, gb = head.gate_proj.weight, head.gate_proj.bias  # [r, H + r], [r]
    assert gw.shape == (3, 5 + 3)
    for j in range(3):
        e = w1[prev[0, 0, j]]
        g = torch.sigmoid(gw @ torch.cat([hid[0, 0, j], e]) + gb)
        torch.testing.assert_close(bias[0, 0, j], w2 @ (g * e))


def test_rnn_head_formula() -> None:
    torch.manual_seed(2)
    rank, hsz = 3, 5
    head = RNNMarkovHead(vocab_size=11, rank=rank, hidden_size=hsz)
    prev = torch.tensor([[[2, 7, 0, 9]], [[1, 1, 1, 1]]])  # [B=2, A=1, K=4]
    hid = torch.randn(2, 1, 4, hsz)
    bias = head.bias(head.features(head.prev_embedding(prev), hid))
    w1, w2 = head.markov_w1.weight, head.markov_w2.weight
    jw, jb = head.joint_proj.weight, head.joint_proj.bias  # [3r, 2r + H]
    assert jw.shape == (3 * rank, 2 * rank + hsz)
    for b in range(2):
        s = torch.zeros(rank)
        for j in range(4):
            z = torch.cat([s, w1[prev[b, 0, j]], hid[b, 0, j]])
            proj = jw @ z + jb
            gate, cand, out = proj[:rank], proj[rank : 2 * rank], proj[2 * rank :]
            s = torch.sigmoid(gate) * s + (1 - torch.sigmoid(gate)) * torch.tanh(cand)
            torch.testing.assert_close(bias[b, 0, j], w2 @ torch.tanh(out))


@pytest.mark.parametrize("with_markov", [True, False])
def test_confidence_head_formula(with_markov: bool) -> None:
    torch.manual_seed(3)
    head = ConfidenceHead(5 + (3 if with_markov else 0))
    hid = torch.randn(2, 4, 5)
    emb = torch.randn(2, 4, 3)
    got = head(hid, emb if with_markov else None)
    feats = torch.cat([hid, emb], -1) if with_markov else hid
    want = feats @ head.proj.weight[0] + head.proj.bias[0]
    torch.testing.assert_close(got, want)


def test_model_uses_teacher_forced_previous_tokens_and_noise_input() -> None:
    cfg = tiny_config()
    batch = make_batch(cfg, bsz=2)
    model = make_model(cfg)
    with torch.no_grad():
        out = model(*batch.args())
    for b in range(2):
        for i in range(batch.anchors.shape[1]):
            a = int(batch.anchors[b, i])
            seq = batch.input_ids[b]
            for j in range(cfg.block_size):
                if a + j + 1 < seq.numel():
                    assert out.labels[b, i, j] == seq[a + j + 1]
                assert out.prev_ids[b, i, j] == (seq[a] if j == 0 else out.labels[b, i, j - 1])
    # the markov features of the vanilla head are W1[prev]
    assert model.markov_head is not None and out.markov_feats is not None
    torch.testing.assert_close(out.markov_feats, model.markov_head.markov_w1.weight[out.prev_ids])


def test_gradients_reach_exactly_the_trainable_parameters() -> None:
    for kind in ("vanilla", "gated", "rnn"):
        cfg = tiny_config(markov_head_type=kind)
        model = make_model(cfg)
        out = model(*make_batch(cfg).args())
        assert out.loss is not None
        out.loss.backward()
        frozen = {"embed_tokens.weight", "lm_head.weight"}
        for name, p in model.named_parameters():
            if name in frozen:
                assert not p.requires_grad and p.grad is None, name
            else:
                assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        assert set(model.trainable_parameter_names()) == {n for n, _ in model.named_parameters()} - frozen


def test_ce_only_training_needs_no_target_last_hidden() -> None:
    from dspark_trainer.config.draft import DraftOptions

    cfg = tiny_config(**DraftOptions.dflash().model_dump(include={"markov_rank", "enable_confidence_head",
                                                                     "confidence_head_with_markov", "ce_alpha",
                                                                     "l1_alpha", "confidence_alpha"}))
    model = make_model(cfg)
    assert model.markov_head is None and model.confidence_head is None
    batch = make_batch(cfg)
    out = model(batch.input_ids, batch.hidden, batch.loss_mask, batch.anchors, batch.keep)
    assert out.loss is not None and set(out.terms) == {"ce"}
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # the CE of DFlash is plain weighted cross-entropy over all K slots
    with torch.no_grad():
        logits = model.logits(out.hidden)
        ce = F.cross_entropy(logits.flatten(0, 2), out.labels.flatten(), reduction="none").view(out.labels.shape)
        want = (out.weights * ce).sum() / out.weights.sum()
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-5, atol=1e-6)


def test_l1_without_target_last_hidden_is_an_error() -> None:
    cfg = tiny_config()
    batch = make_batch(cfg)
    with pytest.raises(ValueError, match="target_last_hidden is required"):
        make_model(cfg)(batch.input_ids, batch.hidden, batch.loss_mask, batch.anchors, batch.keep)
