"""The DSpark attention mask, as a FlexAttention block mask and as a dense boolean reference.

Queries are the ``A * K`` draft slots (block ``b`` = query ``q // K``); keys are the ``T`` context
positions followed by the ``A * K`` draft slots. Query ``q`` of block ``b`` with anchor ``a_b`` may
attend key ``kv`` iff the block is valid and either ``kv < T`` and ``kv < a_b`` (context strictly
before the anchor) or ``kv >= T`` and ``(kv - T) // K == b`` (the same block, bidirectional).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

AttentionBackend = Literal["auto", "flex", "dense"]

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def dense_mask(
    anchors: torch.Tensor, block_keep_mask: torch.Tensor, seq_len: int, block_size: int
) -> torch.Tensor:
    """``[B, 1, A*K, T + A*K]`` bool (True = may attend), vectorised from the definition."""
    bsz, num = anchors.shape
    dev = anchors.device
    q_block = torch.arange(num * block_size, device=dev) // block_size  # [Q]
    q_anchor = anchors[:, q_block]  # [B, Q]
    q_keep = block_keep_mask.bool()[:, q_block]  # [B, Q]
    ctx = torch.arange(seq_len, device=dev).view(1, 1, -1) < q_anchor.unsqueeze(-1)  # [B, Q, T]
    same = (q_block.view(-1, 1) == q_block.view(1, -1)).unsqueeze(0).expand(bsz, -1, -1)  # [B, Q, Q]
    allowed = torch.cat([ctx, same], dim=-1) & q_keep.unsqueeze(-1)
    return allowed.unsqueeze(1)


def dspark_mask_mod(
    anchors: torch.Tensor, block_keep_mask: torch.Tensor, seq_len: int, block_size: int
) -> MaskMod:
    """The FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` of the DSpark mask."""
    num = anchors.shape[1]
    keep = block_keep_mask.bool()

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        q_block = torch.clamp(q_idx // block_size, max=num - 1)
        anchor = anchors[b, q_block]
        in_ctx = (kv_idx < seq_len) & (kv_idx < anchor)
        kv_block = (kv_idx - seq_len) // block_size
        in_block = (kv_idx >= seq_len) & (kv_block == q_block)
        return (in_ctx | in_block) & keep[b, q_block]

    return mask_mod


def flex_block_mask(
    anchors: torch.Tensor,
    block_keep_mask: torch.Tensor,
    seq_len: int,
    block_size: int,
    *,
    compile_mask: bool = False,
    mask_block_size: int = 128,
) -> BlockMask:
    """The FlexAttention ``BlockMask`` over ``Q_LEN = A*K``, ``KV_LEN = T + A*K`` (one per sample, shared by heads)."""
    bsz, num = anchors.shape
    mod = dspark_mask_mod(anchors, block_keep_mask, seq_len, block_size)
    return create_block_mask(
        mod, bsz, None, num * block_size, seq_len + num * block_size, device=anchors.device,
        BLOCK_SIZE=mask_block_size, _compile=compile_mask,
    )


@dataclass
class DraftAttentionMask:
    """The mask of one forward pass, built once and shared by every layer."""

    backend: Literal["flex", "dense"]
    dense: torch.Tensor | None = None
    block: BlockMask | None = None
    compiled: bool = False


def resolve_backend(backend: AttentionBackend, device: torch.device) -> Literal["flex", "dense"]:
    """``auto``: FlexAttention on CUDA, the dense SDPA path elsewhere.

    FlexAttention on CPU (torch 2.11) runs forward only ("does not support backward on CPU"), and
    without ``torch.compile`` it materialises the full score matrix anyway, so training on CPU uses
    the dense path.
    """
    if backend == "auto":
        return "flex" if device.type == "cuda" else "dense"
    if backend not in ("flex", "dense"):
        raise ValueError(f"attention backend must be auto, flex or dense, got {backend!r}")
    return backend


def build_attention_mask(
    anchors: torch.Tensor,
    block_keep_mask: torch.Tensor,
    seq_len: int,
    block_size: int,
    backend: AttentionBackend = "auto",
    *,
    compile_flex: bool | None = None,
) -> DraftAttentionMask:
    """The mask for ``backend``; ``compile_flex`` (default: on CUDA) compiles the block-mask creation and
    the FlexAttention kernel."""
    kind = resolve_backend(backend, anchors.device)
    if kind == "dense":
        return DraftAttentionMask("dense", dense=dense_mask(anchors, block_keep_mask, seq_len, block_size))
    compiled = anchors.device.type == "cuda" if compile_flex is None else compile_flex
    block = flex_block_mask(anchors, block_keep_mask, seq_len, block_size, compile_mask=compiled)
    return DraftAttentionMask("flex", block=block, compiled=compiled)


_COMPILED_FLEX: Any = None


def _compiled_flex() -> Any:
    """``torch.compile(flex_attention)`` with automatic dynamic shapes: after the first change of T or A
    it recompiles once with symbolic sizes instead of once per shape (the default cache limit is 8)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention)
    return _COMPILED_FLEX


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DraftAttentionMask) -> torch.Tensor:
    """Scaled dot-product attention ``[B, Hq, Q, D]`` with GQA (``k``, ``v``: ``[B, Hkv, KV, D]``).

    Fully masked query rows (invalid blocks) come out as zeros on both paths.
    """
    if mask.backend == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, enable_gqa=True)
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise RuntimeError(
            "FlexAttention has no backward on CPU in this torch version; use attention backend 'dense' (or 'auto')"
        )
    # inside a compiled region (compiled decoder layers) dynamo compiles flex_attention itself
    fn = _compiled_flex() if (mask.compiled and not torch.compiler.is_compiling()) else flex_attention
    out = fn(q, k, v, block_mask=mask.block, enable_gqa=True)
    assert isinstance(out, torch.Tensor)
    return out
