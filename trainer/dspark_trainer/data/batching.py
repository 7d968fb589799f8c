"""Captured samples -> one padded micro-batch (right padding; padded positions have loss_mask 0, so
no anchor lands there and no context position after the last real token is ever visible)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from dspark_trainer.data.stream import TokenizedSample


@dataclass
class CapturedSample:
    """A tokenized sample with the target's hidden states for it."""

    sample: TokenizedSample
    hidden: torch.Tensor  # [T, L*H]
    last_hidden: torch.Tensor | None  # [T, H]; None when the loss does not need it
    fetch_seconds: float = 0.0  # time spent getting the tensors out of the transport
    nbytes: int = 0  # bytes moved through the transport


@dataclass
class MicroBatch:
    """What one forward/backward consumes."""

    uids: list[str]
    input_ids: torch.Tensor  # [B, T] long
    loss_mask: torch.Tensor  # [B, T] long
    hidden: torch.Tensor  # [B, T, L*H]
    last_hidden: torch.Tensor | None  # [B, T, H]
    lengths: list[int]
    seeds: list[int] = field(default_factory=list)  # per-sample anchor-sampling seeds

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def to(self, device: torch.device, dtype: torch.dtype) -> MicroBatch:
        return MicroBatch(
            uids=self.uids,
            input_ids=self.input_ids.to(device, non_blocking=True),
            loss_mask=self.loss_mask.to(device, non_blocking=True),
            hidden=self.hidden.to(device=device, dtype=dtype, non_blocking=True),
            last_hidden=None if self.last_hidden is None
            else self.last_hidden.to(device=device, dtype=dtype, non_blocking=True),
            lengths=self.lengths,
            seeds=self.seeds,
        )


def sample_seed(base_seed: int, uid: str, epoch: int) -> int:
    """Anchor-sampling seed of one sample in one epoch: independent of rank, micro-batch and resume."""
    digest = hashlib.sha256(f"dspark-anchors:{base_seed}:{epoch}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def collate(samples: list[CapturedSample], base_seed: int = 0) -> MicroBatch:
    """Right-pad to the longest sample of the micro-batch."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    lengths = [s.sample.num_tokens for s in samples]
    t_max = max(lengths)
    bsz = len(samples)
    input_ids = torch.zeros(bsz, t_max, dtype=torch.long)
    loss_mask = torch.zeros(bsz, t_max, dtype=torch.long)
    first = samples[0]
    hidden = first.hidden.new_zeros(bsz, t_max, first.hidden.shape[-1])
    need_last = all(s.last_hidden is not None for s in samples)
    last_hidden = None
    if need_last and first.last_hidden is not None:
        last_hidden = first.last_hidden.new_zeros(bsz, t_max, first.last_hidden.shape[-1])
    for b, cap in enumerate(samples):
        n = lengths[b]
        if cap.hidden.shape[0] != n:
            raise ValueError(f"sample {cap.sample.uid}: hidden states for {cap.hidden.shape[0]} tokens, expected {n}")
        input_ids[b, :n] = torch.tensor(cap.sample.input_ids, dtype=torch.long)
        loss_mask[b, :n] = torch.tensor(cap.sample.loss_mask, dtype=torch.long)
        hidden[b, :n] = cap.hidden
        if last_hidden is not None and cap.last_hidden is not None:
            last_hidden[b, :n] = cap.last_hidden
    return MicroBatch(
        uids=[s.sample.uid for s in samples],
        input_ids=input_ids,
        loss_mask=loss_mask,
        hidden=hidden,
        last_hidden=last_hidden,
        lengths=lengths,
        seeds=[sample_seed(base_seed, s.sample.uid, s.sample.epoch) for s in samples],
    )
