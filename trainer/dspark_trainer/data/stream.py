"""The per-rank training stream: stream positions -> tokenized samples, from a checkpointed cursor.

Samples with fewer loss tokens than ``dataset.minLossTokens`` are skipped; each yielded sample carries
how many were skipped just before it and the cursor value after it, so a run that checkpoints the
cursor of the last consumed sample resumes at exactly the next one and counts every skip once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dspark_trainer.data.records import ConversationRecord
from dspark_trainer.data.sharding import locate, rank_shard, shard_length
from dspark_trainer.data.tokenize import ChatTokenizer


@dataclass(frozen=True)
class TokenizedSample:
    """One training (or eval) sample as the trainer sends it to a capture server."""

    uid: str
    input_ids: list[int]
    loss_mask: list[int]
    epoch: int = 0
    next_position: int = 0  # the rank's cursor once this sample is consumed
    skipped_before: int = 0  # samples skipped (too few loss tokens) between the previous one and this

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


def encode_record(
    record: ConversationRecord, tokenizer: ChatTokenizer, min_loss_tokens: int, epoch: int = 0
) -> TokenizedSample | None:
    """Tokenize one record; None when it has too few loss tokens."""
    enc = tokenizer.encode(record.messages)
    if enc.num_loss_tokens < min_loss_tokens:
        return None
    return TokenizedSample(uid=record.uid, input_ids=enc.input_ids, loss_mask=enc.loss_mask, epoch=epoch)


class RankStream:
    """An endless iterator over one rank's samples, epoch after epoch, starting at ``start_position``."""

    def __init__(
        self,
        records: Sequence[ConversationRecord],
        tokenizer: ChatTokenizer,
        *,
        world_size: int,
        rank: int,
        seed: int,
        shuffle: bool,
        min_loss_tokens: int,
        start_position: int = 0,
    ) -> None:
        if shard_length(len(records), world_size) <= 0:
            raise ValueError(f"dataset.path: {len(records)} training samples cannot feed {world_size} ranks")
        self.records = records
        self.tokenizer = tokenizer
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.min_loss_tokens = min_loss_tokens
        self.position = start_position
        self._epoch = -1
        self._shard: list[int] = []

    def _index_at(self, position: int) -> tuple[int, int]:
        where = locate(position, len(self.records), self.world_size)
        if where.epoch != self._epoch:
            n = len(self.records)
            self._shard = rank_shard(n, self.world_size, self.rank, self.seed, where.epoch, self.shuffle)
            self._epoch = where.epoch
        return where.epoch, self._shard[where.offset]

    def __iter__(self) -> Iterator[TokenizedSample]:
        return self

    def __next__(self) -> TokenizedSample:
        skipped = 0
        while True:
            epoch, index = self._index_at(self.position)
            self.position += 1
            sample = encode_record(self.records[index], self.tokenizer, self.min_loss_tokens, epoch)
            if sample is not None:
                return TokenizedSample(
                    uid=sample.uid,
                    input_ids=sample.input_ids,
                    loss_mask=sample.loss_mask,
                    epoch=epoch,
                    next_position=self.position,
                    skipped_before=skipped,
                )
            skipped += 1
            if skipped > 10 * max(1, len(self.records)):
                raise ValueError(
                    f"dataset.minLossTokens: no sample of rank {self.rank}'s shard has "
                    f"{self.min_loss_tokens} assistant tokens"
                )
