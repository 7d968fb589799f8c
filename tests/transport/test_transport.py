"""The Mooncake transport client against a real `mooncake_master` over TCP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from dspark_trainer.transport import (
    BufferPoolExhausted,
    MooncakeTransport,
    RecordInfo,
    RecordJanitor,
    RecordNotFoundError,
    StoreFullError,
    StoreUnavailableError,
    make_base_key,
)
from dspark_trainer.transport.record import minute_bucket
from harness.mooncake import MooncakeMaster

pytestmark = pytest.mark.mooncake

MIB = 1024 * 1024


def _record(t: int = 11, h: int = 16, layers: int = 3, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(t, h, generator=g).to(torch.bfloat16) for _ in range(layers)]
    return parts, torch.randn(t, h, generator=g).to(torch.bfloat16)


@contextlib.contextmanager
def _pair(master: MooncakeMaster, **overrides: object) -> Iterator[tuple[MooncakeTransport, MooncakeTransport]]:
    """A connected writer and reader (no segment of its own) on `master`, closed afterwards."""
    cfg = master.transport_config(**overrides)
    writer = MooncakeTransport(cfg, name="writer").connect()
    reader = MooncakeTransport(cfg, segment_size=0, name="reader").connect()
    try:
        yield writer, reader
    finally:
        writer.close()
        reader.close()


def test_put_get_delete_round_trip_leaves_store_empty(mooncake_master: MooncakeMaster) -> None:
    with (
        _pair(mooncake_master) as (writer, reader),
        contextlib.closing(reader.new_buffer_pool(max_buffers=4)) as pool,
    ):
        records = []
        expected = {}
        for i in range(3):
            parts, last = _record(t=5 + i, seed=i)
            base = make_base_key(f"req-{i}")
            records.append((base, {"hidden": parts, "last_hidden": last}))
            expected[base] = (torch.cat(parts, dim=-1), last)
        results = writer.put_records(records)
        assert mooncake_master.key_count() == 6
        infos = [RecordInfo.from_json(r.info.to_json()) for r in results]  # what travels over HTTP
        assert infos[1].fields["hidden"].shape == (6, 48)
        fetched = reader.get_records(infos, pool)
        for f in fetched:
            hidden, last = expected[f.info.base]
            assert f.tensors["hidden"].dtype == torch.bfloat16
            assert torch.equal(f.tensors["hidden"], hidden)
            assert torch.equal(f.tensors["last_hidden"], last)
        # the reader needs nothing but the key: unsized records are sized from the store
        again = reader.get_records([RecordInfo.unsized(infos[0].base)], pool)[0]
        assert torch.equal(again.tensors["hidden"], expected[infos[0].base][0])
        again.release()
        for f in fetched:
            f.release()
        assert pool.in_use == 0
        assert reader.delete_records([i.base for i in infos]) == 6
        assert mooncake_master.key_count() == 0
        # deleting again is fine
        assert reader.delete_records([i.base for i in infos]) == 0


def test_missing_record_is_a_clear_error(mooncake_master: MooncakeMaster) -> None:
    with (
        _pair(mooncake_master, not_found_timeout_seconds=0.3) as (writer, reader),
        contextlib.closing(reader.new_buffer_pool()) as pool,
    ):
        parts, last = _record()
        base = make_base_key("gone")
        (res,) = writer.put_records([(base, {"hidden": parts, "last_hidden": last})])
        reader.delete_records([base])
        with pytest.raises(RecordNotFoundError, match="not in the Mooncake store") as exc:
            reader.get_records([res.info], pool)
        assert exc.value.missing == [base]
        assert pool.in_use == 0


def test_key_not_there_yet_is_retried(mooncake_master: MooncakeMaster) -> None:
    with (
        _pair(mooncake_master, not_found_timeout_seconds=5.0) as (writer, reader),
        contextlib.closing(reader.new_buffer_pool()) as pool,
    ):
        parts, last = _record()
        base = make_base_key("late")
        timer = threading.Timer(0.5, lambda: writer.put_records([(base, {"hidden": parts, "last_hidden": last})]))
        timer.start()
        t0 = time.monotonic()
        (f,) = reader.get_records([RecordInfo.unsized(base)], pool)
        assert time.monotonic() - t0 >= 0.4
        assert torch.equal(f.tensors["last_hidden"], last)
        f.release()
        timer.join()
        reader.delete_records([base])


def test_full_store_back_pressure(mooncake_master: MooncakeMaster) -> None:
    """Records are hard-pinned: a full store is never evicted; writes wait, then fail clearly."""
    with _pair(mooncake_master, global_segment_size=16 * MIB, put_timeout_seconds=0.5) as (writer, reader):
        big = torch.zeros(3 * MIB, dtype=torch.uint8)
        bases = []
        with pytest.raises(StoreFullError, match="stayed full"):
            for i in range(10):
                base = make_base_key(f"fill-{i}")
                writer.put_records([(base, {"hidden": big})])
                bases.append(base)
        assert 3 <= len(bases) < 10
        # nothing was evicted
        for base in bases:
            assert reader.exists(f"{base}/hidden")
        # a writer that waits succeeds once a reader frees space
        slow = writer.config.model_copy(update={"put_timeout_seconds": 10.0})
        writer.config = slow
        threading.Timer(0.5, lambda: reader.delete_records(bases[:2], fields=["hidden"])).start()
        t0 = time.monotonic()
        writer.put_records([(make_base_key("after"), {"hidden": big})])
        assert time.monotonic() - t0 >= 0.4


def test_master_restart(mooncake_master: MooncakeMaster) -> None:
    with (
        _pair(mooncake_master, unavailable_timeout_seconds=1.0, not_found_timeout_seconds=0.2) as (writer, reader),
        contextlib.closing(reader.new_buffer_pool()) as pool,
    ):
        parts, last = _record()
        base = make_base_key("before")
        (res,) = writer.put_records([(base, {"hidden": parts, "last_hidden": last})])
        mooncake_master.kill()
        with pytest.raises(StoreUnavailableError, match=r"unreachable or restarting \(RPC_FAIL"):
            writer.put_records([(make_base_key("during"), {"hidden": parts})])
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            reader.get_records([res.info], pool)
        assert pool.in_use == 0
        mooncake_master.start()
        # the clients reconnect by themselves; the old record died with the master
        deadline = time.monotonic() + 60
        while True:
            try:
                (again,) = writer.put_records([(make_base_key("after"), {"hidden": parts, "last_hidden": last})])
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline, "the writer never recovered after the master restart"
        with pytest.raises(RecordNotFoundError):
            reader.get_records([res.info], pool)
        (f,) = reader.get_records([again.info], pool)
        assert torch.equal(f.tensors["last_hidden"], last)
        f.release()
        reader.delete_records([again.info.base])
        assert mooncake_master.key_count() == 0


def test_delete_request_removes_every_attempt(mooncake_master: MooncakeMaster) -> None:
    with _pair(mooncake_master) as (writer, reader):
        parts, last = _record()
        for _ in range(3):
            writer.put_records([(make_base_key("dup-1"), {"hidden": parts, "last_hidden": last})])
        writer.put_records([(make_base_key("dup-10"), {"hidden": parts, "last_hidden": last})])
        assert mooncake_master.key_count() == 8
        assert reader.delete_request("dup-1") == 6
        assert mooncake_master.key_count() == 2
        assert reader.delete_request("dup-10") == 2


def test_janitor_expires_old_minutes_only(mooncake_master: MooncakeMaster) -> None:
    with _pair(mooncake_master) as (writer, _):
        parts, last = _record()
        now = time.time()
        old = make_base_key("old", now=now - 3600)
        fresh = make_base_key("fresh", now=now)
        writer.put_records([(old, {"hidden": parts, "last_hidden": last}), (fresh, {"hidden": parts})])
        janitor = RecordJanitor(writer, ttl_seconds=600, interval_seconds=60, lookback_minutes=120)
        assert janitor.expired_through(now) < minute_bucket(now) - 10
        assert janitor.sweep(now) == 2
        assert not writer.exists(f"{old}/hidden")
        assert writer.exists(f"{fresh}/hidden")
        assert janitor.sweep(now) == 0  # nothing new to sweep


def test_buffer_pool_reuse_and_exhaustion(mooncake_master: MooncakeMaster) -> None:
    with (
        _pair(mooncake_master) as (writer, reader),
        contextlib.closing(reader.new_buffer_pool(max_buffers=2)) as pool,
    ):
        parts, last = _record()
        base = make_base_key("pool")
        (res,) = writer.put_records([(base, {"hidden": parts, "last_hidden": last})])
        a = reader.get_records([res.info], pool)[0]
        b = reader.get_records([res.info], pool)[0]
        with pytest.raises(BufferPoolExhausted, match="release captured samples"):
            reader.get_records([res.info], pool)
        ptr = a.buffer.ptr if a.buffer else 0
        a.release()
        c = reader.get_records([res.info], pool)[0]
        assert c.buffer is not None and c.buffer.ptr == ptr  # reused, not reallocated
        b.release()
        c.release()
