"""Pure functions for the data order. The training split is visited in epochs; epoch ``e`` uses a
permutation seeded by ``(seed, e)``; rank ``r`` of ``W`` takes every W-th index of it starting at
``r``, truncated to ``shard_length = n // W`` so every rank has the same number of samples per epoch
(the remainder of an epoch is dropped; a different one each epoch). A rank's cursor is a single
integer, the number of stream positions it has consumed; position ``p`` is epoch ``p // shard_length``,
offset ``p % shard_length``."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 64-bit seed for one epoch's permutation."""
    digest = hashlib.sha256(f"dspark-data:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of the ``n`` training samples in ``epoch``."""
    order = list(range(n))
    if shuffle:
        random.Random(epoch_seed(seed, epoch)).shuffle(order)
    return order


def shard_length(n: int, world_size: int) -> int:
    """Samples per rank per epoch."""
    return n // world_size


def rank_shard(n: int, world_size: int, rank: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The sample indices rank ``rank`` visits in ``epoch``, in order."""
    length = shard_length(n, world_size)
    return epoch_permutation(n, seed, epoch, shuffle)[rank::world_size][:length]


@dataclass(frozen=True)
class StreamPosition:
    """Where stream position ``position`` lands: its epoch and offset inside the rank's shard."""

    epoch: int
    offset: int


def locate(position: int, n: int, world_size: int) -> StreamPosition:
    """Epoch and offset of a rank's stream position."""
    length = shard_length(n, world_size)
    if length <= 0:
        raise ValueError(f"{n} samples cannot be shared by {world_size} ranks")
    return StreamPosition(epoch=position // length, offset=position % length)


def samples_per_rank_per_step(global_batch_size: int, world_size: int, micro_batch_size: int) -> tuple[int, int]:
    """(samples per rank per step, gradient accumulation steps); raises when they do not divide."""
    if global_batch_size % (world_size * micro_batch_size):
        raise ValueError(
            f"schedule.globalBatchSize ({global_batch_size}) must be a multiple of ranks ({world_size}) x "
            f"schedule.microBatchSize ({micro_batch_size})"
        )
    per_rank = global_batch_size // world_size
    return per_rank, per_rank // micro_batch_size


def total_steps(n_train: int, global_batch_size: int, num_epochs: float, max_steps: int | None) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``floor(epochs * n_train / global batch)`` (at least 1)."""
    if max_steps is not None:
        return max_steps
    return max(1, int(num_epochs * n_train) // global_batch_size)
