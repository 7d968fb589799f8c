"""Anchor sampling and the per-block index arithmetic (pure functions on index tensors).

Shapes: ``B`` samples, ``T`` positions, ``A`` anchors, ``K`` block size. Slot ``j`` of the block at
anchor ``a`` sits at RoPE position ``a + j`` and predicts ``input_ids[a + j + 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def anchor_candidates(loss_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: position ``i`` may be an anchor when ``loss_mask[i]`` and ``loss_mask[i + 1]`` are 1."""
    lm = loss_mask.bool()
    cand = torch.zeros_like(lm)
    cand[:, :-1] = lm[:, :-1] & lm[:, 1:]
    return cand


def sample_anchors(
    loss_mask: torch.Tensor,
    num_anchors: int,
    *,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    pad_to: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw up to ``num_anchors`` candidates per sample uniformly without replacement, sorted.

    Returns ``(anchors [B, A] long, block_keep_mask [B, A] bool)`` on ``loss_mask``'s device. Valid
    anchors come first in increasing order; unused slots hold position 0 and are marked invalid.
    ``A`` is the largest number drawn in the batch (at least 1), or ``pad_to`` when given (a fixed
    shape; must be >= ``num_anchors``). With ``seeds`` (one per sample), sample ``b`` draws from its
    own ``torch.Generator`` seeded with ``seeds[b]``, so its anchors do not depend on which other
    samples share its micro-batch; otherwise all samples draw from ``generator`` (or the global RNG).
    """
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
    bsz = loss_mask.shape[0]
    if seeds is not None and len(seeds) != bsz:
        raise ValueError(f"got {len(seeds)} seeds for {bsz} samples")
    cand = anchor_candidates(loss_mask).cpu()
    chosen: list[torch.Tensor] = []
    for b in range(bsz):
        idx = torch.nonzero(cand[b], as_tuple=False).flatten()
        if idx.numel() > num_anchors:
            gen = generator
            if seeds is not None:
                gen = torch.Generator().manual_seed(int(seeds[b]))
            perm = torch.randperm(idx.numel(), generator=gen)[:num_anchors]
            idx = idx[perm].sort().values
        chosen.append(idx)
    width = max(1, max(c.numel() for c in chosen))
    if pad_to is not None:
        if pad_to < num_anchors:
            raise ValueError(f"pad_to ({pad_to}) must be >= num_anchors ({num_anchors})")
        width = pad_to
    anchors = torch.zeros(bsz, width, dtype=torch.long)
    keep = torch.zeros(bsz, width, dtype=torch.bool)
    for b, idx in enumerate(chosen):
        anchors[b, : idx.numel()] = idx
        keep[b, : idx.numel()] = True
    return anchors.to(loss_mask.device), keep.to(loss_mask.device)


def check_anchors(anchors: torch.Tensor, block_keep_mask: torch.Tensor, seq_len: int) -> None:
    """Raise ValueError unless anchors are ``[B, A]`` integer positions in ``[0, T - 1]`` with a matching mask."""
    if anchors.dim() != 2 or block_keep_mask.shape != anchors.shape:
        raise ValueError(
            f"anchors {tuple(anchors.shape)} and block_keep_mask {tuple(block_keep_mask.shape)} must both be [B, A]"
        )
    if anchors.dtype.is_floating_point:
        raise ValueError("anchors must be an integer tensor")
    if anchors.numel() and (int(anchors.min()) < 0 or int(anchors.max()) >= seq_len):
        raise ValueError(f"anchors must be positions in [0, {seq_len - 1}]")


def draft_positions(anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[B, A * K]`` RoPE positions of the draft slots: ``a + j``."""
    offs = torch.arange(block_size, device=anchors.device)
    return (anchors.unsqueeze(-1) + offs).flatten(1)


def label_indices(anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[B, A, K]`` index of the token slot ``j`` predicts: ``a + j + 1`` (may be >= T)."""
    offs = torch.arange(1, block_size + 1, device=anchors.device)
    return anchors.unsqueeze(-1) + offs


def block_tokens(
    input_ids: torch.Tensor, anchors: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [B, A, K], prev [B, A, K])``: the teacher-forced targets and previous tokens.

    ``labels[..., j] = input_ids[a + j + 1]`` (clamped to the last position where out of range, which
    ``eval_mask`` excludes); ``prev = [input_ids[a], labels_0, ..., labels_{K-2}]``.
    """
    seq_len = input_ids.shape[1]
    idx = label_indices(anchors, block_size).clamp(max=seq_len - 1)
    bsz = input_ids.shape[0]
    labels = torch.gather(input_ids, 1, idx.reshape(bsz, -1)).reshape(idx.shape)
    first = torch.gather(input_ids, 1, anchors).unsqueeze(-1)
    prev = torch.cat([first, labels[..., :-1]], dim=-1)
    return labels, prev


def eval_mask(
    loss_mask: torch.Tensor, anchors: torch.Tensor, block_keep_mask: torch.Tensor, block_size: int
) -> torch.Tensor:
    """``[B, A, K]`` bool: valid block, label index < T and ``loss_mask[label] = 1``, as a prefix over j."""
    seq_len = loss_mask.shape[1]
    idx = label_indices(anchors, block_size)
    in_range = idx < seq_len
    lm = torch.gather(loss_mask.bool(), 1, idx.clamp(max=seq_len - 1).flatten(1)).reshape(idx.shape)
    ok = in_range & lm & block_keep_mask.bool().unsqueeze(-1)
    return ok.to(torch.int32).cumprod(dim=-1).bool()


def noise_input_ids(
    input_ids: torch.Tensor, anchors: torch.Tensor, block_size: int, mask_token_id: int
) -> torch.Tensor:
    """``[B, A * K]`` draft input tokens: slot 0 is ``input_ids[a]``, the other slots ``mask_token_id``."""
    bsz, num = anchors.shape
    ids = torch.full((bsz, num, block_size), mask_token_id, dtype=input_ids.dtype, device=input_ids.device)
    ids[:, :, 0] = torch.gather(input_ids, 1, anchors)
    return ids.flatten(1)


def decay_weights(block_size: int, gamma: float, device: torch.device | None = None) -> torch.Tensor:
    """``[K]`` float32: ``exp(-j / gamma)`` (1, .78, .61, .47, .37, .29, .22 for K = 7, gamma = 4)."""
    j = torch.arange(block_size, dtype=torch.float32, device=device)
    return torch.exp(-j / gamma)


def position_weights(eval_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``[B, A, K]`` float32 loss weights ``w = eval_mask * exp(-j / gamma)``."""
    return eval_mask.float() * decay_weights(eval_mask.shape[-1], gamma, eval_mask.device)
