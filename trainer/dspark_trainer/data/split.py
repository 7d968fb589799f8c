"""The deterministic train/eval split: a record is held out when a hash of its id falls below the
eval fraction, so the split does not depend on file order and survives appending data."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from dspark_trainer.data.records import ConversationRecord, RecordSubset, record_uid


def id_unit_interval(uid: str) -> float:
    """A stable pseudo-random number in [0, 1) derived from the id."""
    digest = hashlib.sha256(uid.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_records(
    records: Sequence[ConversationRecord], eval_fraction: float
) -> tuple[RecordSubset, RecordSubset]:
    """(train, eval) views in the original order (records are not read, only their ids)."""
    train: list[int] = []
    held_out: list[int] = []
    for i in range(len(records)):
        (held_out if id_unit_interval(record_uid(records, i)) < eval_fraction else train).append(i)
    return RecordSubset(records, train), RecordSubset(records, held_out)
