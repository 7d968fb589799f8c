"""A frozen embedding table that stays in pinned host memory.

The draft embeds only its block inputs: each block's anchor token and the mask token, at most
``num_anchors + 1`` distinct rows per micro-batch, out of a ``[V, H]`` table (1.24 GB in bf16 at the
Qwen3-8B shape) that never trains. ``HostEmbedding`` keeps the table on the host and, per forward,
gathers the distinct rows there and copies them to the GPU (~4 MB at 512 anchors).

Two ways to get the ids to the host:
- ``stage(ids_host)`` before the forward, by a caller that has the micro-batch on the host anyway (the
  data path): the rows are gathered and their copy queued at once; the forward only checks, on the
  GPU and without waiting, that its ids are the staged ones (``torch._assert_async``).
- otherwise the forward reads the ids back from the GPU, which waits for the work queued before them
  (a bubble of a few ms per forward on an H100).
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
        self._staged: tuple[torch.Tensor, torch.Tensor] | None = None  # (ids, rows) on the device

    def stage(self, ids: torch.Tensor, device: torch.device) -> None:
        """Gather the rows of ``ids`` (host tensor) for the next forward and queue their copy to ``device``."""
        ids = ids.to("cpu")
        distinct, inverse = torch.unique(ids, return_inverse=True)
        rows = self.weight.index_select(0, distinct)
        if device.type == "cuda":
            rows = rows.pin_memory()  # a fresh buffer per call: nothing can overwrite it while it is copied
        self._staged = (ids.to(device, non_blocking=True), rows.to(device, non_blocking=True)[inverse.to(device)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.device.type == "cpu":
            return nn.functional.embedding(ids, self.weight)
        staged, self._staged = self._staged, None
        if staged is not None and staged[0].shape == ids.shape:
            torch._assert_async((staged[0] == ids).all(), "HostEmbedding: the forward's ids are not the staged ones")
            return staged[1]
        distinct, inverse = torch.unique(ids, return_inverse=True)
        wanted = distinct.cpu()  # waits for the ids (and the GPU work queued before them)
        rows = self.weight.index_select(0, wanted).pin_memory()
        return rows.to(ids.device, non_blocking=True)[inverse]


def keep_embedding_on_host(model: nn.Module) -> int:
    """Move ``model.embed_tokens`` (frozen) to host memory; returns the bytes freed on the device."""
    table = model.embed_tokens
    if not isinstance(table, nn.Embedding) or table.weight.requires_grad:
        raise ValueError("keep_embedding_on_host wants a frozen nn.Embedding at model.embed_tokens")
    freed = table.weight.numel() * table.weight.element_size() if table.weight.is_cuda else 0
    model.embed_tokens = HostEmbedding(table.weight)
    return freed
