"""HostEmbedding gives the same rows as the embedding it replaces."""

from __future__ import annotations

import pytest
import torch
from dspark_trainer.model.host_embedding import HostEmbedding, keep_embedding_on_host
from torch import nn


def test_rows_equal_the_device_embedding() -> None:
    table = nn.Embedding(50, 8)
    host = HostEmbedding(table.weight)
    ids = torch.tensor([[3, 3, 49, 0], [7, 3, 0, 0]])
    assert torch.equal(host(ids), table(ids))
    assert host.weight.device.type == "cpu" and not host.weight.requires_grad


def test_refuses_a_trainable_table_naming_the_fix() -> None:
    model = nn.Module()
    model.embed_tokens = nn.Embedding(4, 2)
    with pytest.raises(ValueError, match=r"frozen nn\.Embedding"):
        keep_embedding_on_host(model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_ids_gather_on_the_host_and_match() -> None:
    table = nn.Embedding(1000, 64).cuda().requires_grad_(False)
    ids = torch.randint(0, 1000, (2, 300), device="cuda")
    expected = table(ids)
    model = nn.Module()
    model.embed_tokens = table
    freed = keep_embedding_on_host(model)
    assert freed == 1000 * 64 * 4
    for _ in range(3):  # the pinned staging buffer is reused
        assert torch.equal(model.embed_tokens(ids), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_staged_host_ids_give_the_same_rows_without_reading_the_device_ids() -> None:
    table = nn.Embedding(1000, 64).requires_grad_(False)
    host = HostEmbedding(table.weight)
    ids = torch.randint(0, 1000, (2, 300))
    for _ in range(3):
        host.stage(ids, torch.device("cuda"))
        assert torch.equal(host(ids.cuda()).cpu(), table(ids))
    assert host._staged is None  # used once
