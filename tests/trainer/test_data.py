"""Dataset reading, split, sharding, the resumable per-rank stream, the bundled dataset."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.assets import DEMO_DATASET
from dspark_trainer.data import demo_dataset
from dspark_trainer.data.records import DatasetError, load_dataset, resolve_dataset_paths
from dspark_trainer.data.sharding import (
    epoch_permutation,
    locate,
    rank_shard,
    samples_per_rank_per_step,
    total_steps,
)
from dspark_trainer.data.split import split_records
from dspark_trainer.data.stream import RankStream
from dspark_trainer.data.tokenize import ChatTokenizer


def conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_ids_from_field_or_line(write_jsonl: Any) -> None:
    path = write_jsonl([{"id": "a", "messages": conv("q", "a")}, {"messages": conv("q", "b")}])
    records = load_dataset(str(path))
    assert [r.uid for r in records] == ["a", "data.jsonl:2"]


def test_duplicate_ids_and_bad_records_name_the_line(write_jsonl: Any, tmp_path: Path) -> None:
    path = write_jsonl([{"id": "a", "messages": conv("q", "a")}, {"id": "a", "messages": conv("q", "b")}])
    with pytest.raises(DatasetError, match=r"data\.jsonl:2: duplicate"):
        load_dataset(str(path))
    bad = write_jsonl([{"messages": [{"role": "robot", "content": "x"}]}], name="bad.jsonl")
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1"):
        load_dataset(str(bad))


def test_missing_dataset_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.path: .* does not exist"):
        resolve_dataset_paths(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DatasetError, match=r"dataset\.path: no file matches"):
        resolve_dataset_paths(str(tmp_path / "*.jsonl"))
    with pytest.raises(DatasetError, match="unknown builtin"):
        resolve_dataset_paths("builtin:nope")


def test_directory_and_glob(write_jsonl: Any, tmp_path: Path) -> None:
    write_jsonl([{"messages": conv("q", "a")}], name="b.jsonl")
    write_jsonl([{"messages": conv("q", "a")}], name="a.jsonl")
    assert [p.name for p in resolve_dataset_paths(str(tmp_path))] == ["a.jsonl", "b.jsonl"]
    assert len(load_dataset(str(tmp_path / "*.jsonl"))) == 2


def test_split_is_stable_and_disjoint() -> None:
    records = load_dataset("builtin:demo-conversations")
    train, held = split_records(records, 0.1)
    assert len(train) + len(held) == len(records)
    assert {r.uid for r in train}.isdisjoint({r.uid for r in held})
    assert 20 <= len(held) <= 60
    _, held2 = split_records(list(reversed(records)), 0.1)
    assert {r.uid for r in held2} == {r.uid for r in held}


def test_sharding_covers_each_epoch_once_per_rank_set() -> None:
    n, world = 23, 4
    for epoch in range(3):
        shards = [rank_shard(n, world, r, seed=7, epoch=epoch) for r in range(world)]
        flat = list(itertools.chain(*shards))
        assert len(flat) == len(set(flat)) == (n // world) * world
        assert all(len(s) == n // world for s in shards)
    assert epoch_permutation(n, 7, 0) != epoch_permutation(n, 7, 1)
    assert epoch_permutation(n, 7, 0) == epoch_permutation(n, 7, 0)
    assert epoch_permutation(n, 7, 0, shuffle=False) == list(range(n))
    assert locate(11, n, world).epoch == 2 and locate(11, n, world).offset == 1  # 5 per rank per epoch


def test_batch_math() -> None:
    assert samples_per_rank_per_step(8, 2, 2) == (4, 2)
    with pytest.raises(ValueError, match=r"schedule\.globalBatchSize"):
        samples_per_rank_per_step(6, 4, 1)
    assert total_steps(100, 8, 2.0, None) == 25
    assert total_steps(100, 8, 2.0, 3) == 3
    assert total_steps(3, 8, 1.0, None) == 1


def test_stream_resumes_exactly_and_counts_skips_once(char_tokenizer: Any, write_jsonl: Any) -> None:
    records = [{"id": f"s{i}", "messages": conv("q", "answer" if i % 5 else "")} for i in range(30)]
    data = load_dataset(str(write_jsonl(records)))
    tok = ChatTokenizer(char_tokenizer, max_length=64, template_kwargs={"enable_thinking": False})
    kwargs: dict[str, Any] = {"world_size": 2, "rank": 1, "seed": 3, "shuffle": True, "min_loss_tokens": 3}
    full = list(itertools.islice(RankStream(data, tok, **kwargs), 40))
    # Resume after the 17th sample from its cursor:
    resumed = list(itertools.islice(RankStream(data, tok, start_position=full[16].next_position, **kwargs), 23))
    assert [s.uid for s in full[17:]] == [s.uid for s in resumed]
    assert [s.skipped_before for s in full[17:]] == [s.skipped_before for s in resumed]
    # Empty answers ("" -> only "<|im_end|>", one loss token) are skipped and counted.
    assert all(int(s.uid[1:]) % 5 for s in full)
    # Every stream position is either used once or skipped once.
    assert sum(1 + s.skipped_before for s in full) == full[-1].next_position
    # Within one epoch every sample appears at most once.
    assert max(Counter((s.epoch, s.uid) for s in full).values()) == 1


def test_ranks_need_samples(char_tokenizer: Any, write_jsonl: Any) -> None:
    data = load_dataset(str(write_jsonl([{"messages": conv("q", "abc")}])))
    tok = ChatTokenizer(char_tokenizer, max_length=64)
    with pytest.raises(ValueError, match=r"dataset\.path: 1 training samples cannot feed 2 ranks"):
        RankStream(data, tok, world_size=2, rank=0, seed=0, shuffle=True, min_loss_tokens=2)


def test_bundled_dataset_matches_its_generator() -> None:
    assert DEMO_DATASET.read_text() == demo_dataset.to_jsonl(demo_dataset.generate())
    assert len(load_dataset(str(DEMO_DATASET))) == demo_dataset.DEFAULT_COUNT


def test_record_store_reads_lines_on_demand(tmp_path: Path) -> None:
    import json

    from dspark_trainer.data.records import RecordStore, record_uid

    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"id": "x", "messages": conv("é?", "ü!")}) + "\n\n"
                 + json.dumps({"messages": conv("q2", "a2")}) + "\n", encoding="utf-8")
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"id": 7, "messages": conv("q3", "a3")}) + "\n")
    store = RecordStore([a, b])
    assert len(store) == 3 and store.uids == ["x", "a.jsonl:3", "7"]
    assert store[2].messages[1]["content"] == "a3" and store[0].messages[0]["content"] == "é?"
    assert store[-2].uid == "a.jsonl:3" and [r.uid for r in store[1:]] == ["a.jsonl:3", "7"]
    train, held = split_records(store, 0.5)
    assert sorted([record_uid(train, i) for i in range(len(train))] + [r.uid for r in held]) == sorted(store.uids)
    store.close()
