"""A straightforward eager implementation of the DSpark training loss, for the speed ratio
and as an independent check of the optimized path.

It reads the parameters of a ``DSparkDraftModel`` (vanilla Markov head, confidence head with Markov
features, as in the published recipe) and computes the same loss with plain PyTorch: a dense boolean
mask, K/V repeated for the query heads and ``scaled_dot_product_attention``, unfused RMSNorm/RoPE/SwiGLU,
and the full ``[A*K, V]`` float32 logits of the draft and of the target kept by autograd. No compile,
no FlexAttention, no chunking, no custom autograd functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(1) + rot * sin.unsqueeze(1)


def eager_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    target_hidden: torch.Tensor,
    loss_mask: torch.Tensor,
    anchors: torch.Tensor,
    keep: torch.Tensor,
    target_last_hidden: torch.Tensor,
    *,
    denominator: float | None = None,
    world_size: int = 1,
    mark: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """The DSpark loss ``0.1 CE + 0.9 L1 + 1.0 Conf`` (the model's alphas) of one micro-batch.

    ``mark("loss")`` is called where the backbone ends and the vocabulary/loss part begins (for timing).
    """
    cfg = model.config
    p = dict(model.named_parameters())
    bsz, seq = input_ids.shape
    num = anchors.shape[1]
    k = cfg.block_size
    hid, nh, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    dev = input_ids.device
    dtype = p["fc.weight"].dtype
    keep = keep.bool()

    # context and draft input
    ctx = _rms(target_hidden.to(dtype) @ p["fc.weight"].t(), p["hidden_norm.weight"], eps)
    offs = torch.arange(k, device=dev)
    ids = torch.full((bsz, num, k), cfg.mask_token_id, dtype=input_ids.dtype, device=dev)
    ids[:, :, 0] = torch.gather(input_ids, 1, anchors)
    h = p["embed_tokens.weight"][ids.flatten(1)].to(dtype)  # [B, Q, H]
    q_len = num * k

    # RoPE tables: context 0..T-1, slot j of anchor a at a + j
    pos = torch.cat([torch.arange(seq, device=dev).expand(bsz, -1), (anchors.unsqueeze(-1) + offs).flatten(1)], 1)
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd))
    fr = pos.float().unsqueeze(-1) * inv
    emb = torch.cat([fr, fr], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)

    # dense mask [B, 1, Q, T + Q]
    qb = torch.arange(q_len, device=dev) // k
    q_anchor = anchors[:, qb]
    allowed_ctx = torch.arange(seq, device=dev).view(1, 1, -1) < q_anchor.unsqueeze(-1)
    allowed_blk = (qb.view(-1, 1) == qb.view(1, -1)).unsqueeze(0).expand(bsz, -1, -1)
    mask = (torch.cat([allowed_ctx, allowed_blk], -1) & keep[:, qb].unsqueeze(-1)).unsqueeze(1)

    for i in range(cfg.num_draft_layers):
        pre = f"layers.{i}."
        x = _rms(h, p[pre + "input_layernorm.weight"], eps)
        q = (x @ p[pre + "self_attn.q_proj.weight"].t()).view(bsz, q_len, nh, hd)
        q = _rms(q, p[pre + "self_attn.q_norm.weight"], eps).transpose(1, 2)
        kv_in = torch.cat([ctx, x], 1)
        kk = (kv_in @ p[pre + "self_attn.k_proj.weight"].t()).view(bsz, seq + q_len, nkv, hd)
        kk = _rms(kk, p[pre + "self_attn.k_norm.weight"], eps).transpose(1, 2)
        vv = (kv_in @ p[pre + "self_attn.v_proj.weight"].t()).view(bsz, seq + q_len, nkv, hd).transpose(1, 2)
        q = _rope(q, cos[:, seq:], sin[:, seq:])
        kk = _rope(kk, cos, sin)
        rep = nh // nkv
        kk = kk.repeat_interleave(rep, dim=1)
        vv = vv.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        att = torch.where(keep[:, qb].view(bsz, 1, q_len, 1), att, torch.zeros_like(att))  # fully masked rows
        h = h + att.transpose(1, 2).reshape(bsz, q_len, nh * hd) @ p[pre + "self_attn.o_proj.weight"].t()
        x = _rms(h, p[pre + "post_attention_layernorm.weight"], eps)
        gate = x @ p[pre + "mlp.gate_proj.weight"].t()
        up = x @ p[pre + "mlp.up_proj.weight"].t()
        h = h + (F.silu(gate) * up) @ p[pre + "mlp.down_proj.weight"].t()
    h = _rms(h, p["norm.weight"], eps).view(bsz, num, k, hid)
    if mark is not None:
        mark("loss")

    # labels, previous tokens, eval mask, weights
    lab_idx = anchors.unsqueeze(-1) + offs + 1
    labels = torch.gather(input_ids, 1, lab_idx.clamp(max=seq - 1).flatten(1)).view(bsz, num, k)
    prev = torch.cat([torch.gather(input_ids, 1, anchors).unsqueeze(-1), labels[..., :-1]], -1)
    lm = torch.gather(loss_mask.bool(), 1, lab_idx.clamp(max=seq - 1).flatten(1)).view(bsz, num, k)
    em = ((lab_idx < seq) & lm & keep.unsqueeze(-1)).int().cumprod(-1).bool()
    w = em.float() * torch.exp(-offs.float() / cfg.gamma)

    # heads and logits (all positions, float32, kept whole)
    w1 = p["markov_head.markov_w1.weight"][prev]  # [B, A, K, r]
    logits = (h @ p["lm_head.weight"].t()).float() + (w1 @ p["markov_head.markov_w2.weight"].t()).float()
    conf = (torch.cat([h, w1.to(h.dtype)], -1) @ p["confidence_head.proj.weight"].t()).squeeze(-1)
    conf = conf + p["confidence_head.proj.bias"]
    logp = torch.log_softmax(logits, -1)
    ce = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    t_pos = (anchors.unsqueeze(-1) + offs).clamp(max=seq - 1)
    t_h = torch.gather(target_last_hidden, 1, t_pos.flatten(1).unsqueeze(-1).expand(-1, -1, hid)).view(bsz, num, k, hid)
    with torch.no_grad():
        pt = torch.softmax((t_h.to(dtype) @ p["lm_head.weight"].t()).float(), -1)
    tv = (logp.exp() - pt).abs().sum(-1)
    c_star = (1 - 0.5 * tv.detach()).clamp(0, 1)
    bce = F.binary_cross_entropy_with_logits(conf.float(), c_star, reduction="none")
    denom = float(w.sum()) if denominator is None else denominator
    scale = world_size / max(denom, 1e-12)
    total = cfg.ce_alpha * (w * ce).sum() + cfg.l1_alpha * (w * tv).sum() + cfg.confidence_alpha * (w * bce).sum()
    return total * scale


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / (b.float().norm() + 1e-30))


def grad_errors(model: torch.nn.Module, grads_ref: dict[str, torch.Tensor]) -> float:
    """Largest relative gradient error of ``model``'s current grads against ``grads_ref`` (by name)."""
    worst = 0.0
    for name, param in model.named_parameters():
        if name in grads_ref and param.grad is not None:
            err = relative_error(param.grad, grads_ref[name])
            worst = max(worst, err if math.isfinite(err) else float("inf"))
    return worst
