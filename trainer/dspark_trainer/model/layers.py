"""Qwen3 building blocks of the draft: RMSNorm, rotary embedding, dual-source attention, SwiGLU MLP,
and the pre-norm decoder layer (one module per layer, so FSDP2 can shard each with ``fully_shard``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dspark_trainer.model.config import DSparkModelConfig
from dspark_trainer.model.masks import DraftAttentionMask, attend


class RMSNorm(nn.Module):
    """Qwen3 RMSNorm: normalise in float32, scale by ``weight`` in the input dtype."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``[B, N, head_dim]`` for integer ``positions [B, N]`` (Qwen3's default RoPE)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float().unsqueeze(-1) * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, N, D]`` with ``cos, sin [B, N, D]``."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class DSparkAttention(nn.Module):
    """Queries from the draft stream only; keys/values from ``[ctx ; h]`` through the same projections.

    ``k_norm`` is applied to every key (context and draft); values are not normalised. Context keys
    take RoPE positions ``0..T-1``, draft slots their own positions ``a + j``.
    """

    def __init__(self, cfg: DSparkModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: DraftAttentionMask
    ) -> torch.Tensor:
        """``x [B, Q, H]`` (normalised draft stream), ``ctx [B, T, H]``, ``cos/sin [B, T + Q, D]`` -> ``[B, Q, H]``."""
        bsz, q_len, _ = x.shape
        t_len = ctx.shape[1]
        q = self.q_norm(self.q_proj(x).view(bsz, q_len, self.num_heads, self.head_dim)).transpose(1, 2)
        kv_in = torch.cat([ctx.to(x.dtype), x], dim=1)
        k = self.k_norm(self.k_proj(kv_in).view(bsz, t_len + q_len, self.num_kv_heads, self.head_dim))
        v = self.v_proj(kv_in).view(bsz, t_len + q_len, self.num_kv_heads, self.head_dim)
        k = k.transpose(1, 2)
        v = v.transpose(1, 2)
        q = apply_rotary(q, cos[:, t_len:], sin[:, t_len:])
        k = apply_rotary(k, cos, sin)
        out = attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, q_len, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """Qwen3 MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _layer_math(
    layer: DSparkDecoderLayer, h: torch.Tensor, ctx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    mask: DraftAttentionMask,
) -> torch.Tensor:
    h = h + layer.self_attn(layer.input_layernorm(h), ctx, cos, sin, mask)
    return h + layer.mlp(layer.post_attention_layernorm(h))


_COMPILED_LAYER_MATH: Any = None


def compiled_layer_math() -> Any:
    """One ``torch.compile`` of the layer math shared by every layer (the parameters are graph inputs, so
    the layers reuse one compiled graph). It is called from inside ``forward``, so FSDP2's hooks (in
    ``__call__``) stay outside the compiled region and parameter names keep no ``_orig_mod`` prefix."""
    global _COMPILED_LAYER_MATH
    if _COMPILED_LAYER_MATH is None:
        _COMPILED_LAYER_MATH = torch.compile(_layer_math)
    return _COMPILED_LAYER_MATH


class DSparkDecoderLayer(nn.Module):
    """Pre-norm Qwen3 decoder layer whose attention also reads the (already normalised) context.

    ``use_compiled`` (set by the draft per forward) runs the layer through ``torch.compile`` (fuses the
    norms, RoPE, SiLU-gating and residual adds around the matmuls and FlexAttention)."""

    def __init__(self, cfg: DSparkModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DSparkAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.use_compiled = False

    def forward(
        self, h: torch.Tensor, ctx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: DraftAttentionMask
    ) -> torch.Tensor:
        if self.use_compiled:
            out: torch.Tensor = compiled_layer_math()(self, h, ctx, cos, sin, mask)
            return out
        return _layer_math(self, h, ctx, cos, sin, mask)
