"""A frozen embedding table that stays in pinned host memory.

The draft embeds only its block inputs: each block's anchor token and the mask token, at most
``num_anchors + 1`` distinct rows per micro-batch, out of a ``[V, H]`` table (1.24 GB in bf16 at the
Qwen3-8B shape) that never trains. ``HostEmbedding`` keeps the table on the host and, per forward,
gathers the distinct rows there and copies them to the GPU (~4 MB at 512 anchors). Reading the ids
on the host synchronises with the GPU once per forward, at the start of the draft's backbone.
"""

from __future__ import annotations

import torch
from torch import nn


class HostEmbedding(nn.Module):
    """Drop-in, forward-only replacement of a frozen ``nn.Embedding`` whose table lives in host memory."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        host = weight.detach().to("cpu")
        self.weight = nn.Parameter(host.pin_memory() if torch.cuda.is_available() else host, requires_grad=False)
        self._staging: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.device.type == "cpu":
            return nn.functional.embedding(ids, self.weight)
        distinct, inverse = torch.unique(ids, return_inverse=True)
        wanted = distinct.cpu()  # waits for the ids (and the GPU work queued before them)
        rows = self._stage(wanted.numel())
        torch.index_select(self.weight, 0, wanted, out=rows)
        return rows.to(ids.device, non_blocking=True)[inverse]

    def _stage(self, n: int) -> torch.Tensor:
        """A pinned buffer for ``n`` rows; reused: the previous copy out of it finished before ``.cpu()`` returned."""
        if self._staging is None or self._staging.shape[0] < n:
            self._staging = torch.empty((n, self.weight.shape[1]), dtype=self.weight.dtype).pin_memory()
        return self._staging[:n]


def keep_embedding_on_host(model: nn.Module) -> int:
    """Move ``model.embed_tokens`` (frozen) to host memory; returns the bytes freed on the device."""
    table = model.embed_tokens
    if not isinstance(table, nn.Embedding) or table.weight.requires_grad:
        raise ValueError("keep_embedding_on_host wants a frozen nn.Embedding at model.embed_tokens")
    freed = table.weight.numel() * table.weight.element_size() if table.weight.is_cuda else 0
    model.embed_tokens = HostEmbedding(table.weight)
    return freed
