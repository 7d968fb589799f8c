"""The asynchronous record writer: submit never waits for the store, the queue is bounded (records and
bytes), a full queue back-pressures and then fails visibly, failures reach the pending write, and over a
real Mooncake master the records read back bit-identical."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import torch
from dspark_trainer.transport import MooncakeTransport, RecordInfo, StoreFullError
from dspark_trainer.transport.async_writer import (
    AsyncRecordWriter,
    PendingWrite,
    WriterClosedError,
    WriterFullError,
)
from dspark_trainer.transport.mooncake_client import PutResult, TensorParts, describe_record
from dspark_trainer.transport.record import make_base_key
from harness.mooncake import MooncakeMaster

WAIT = 10.0  # an upper bound for things that happen at once; never reached when the code is right


class GatedPut:
    """A put that blocks until ``gate`` is set, recording the batches it was given."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []
        self.fail = fail

    def __call__(self, records: Sequence[tuple[str, Mapping[str, TensorParts]]]) -> list[PutResult]:
        self.batches.append([base for base, _ in records])
        self.entered.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        return [PutResult(describe_record(base, fields), 0.001) for base, fields in records]


def record(rows: int = 4, width: int = 8) -> dict[str, torch.Tensor]:
    return {"hidden": torch.zeros(rows, 3 * width, dtype=torch.bfloat16),
            "last_hidden": torch.zeros(rows, width, dtype=torch.bfloat16)}


def nbytes(fields: dict[str, torch.Tensor]) -> int:
    return describe_record("dspark/1/r/0", fields).nbytes


@pytest.fixture
def gated() -> Iterator[GatedPut]:
    put = GatedPut()
    yield put
    put.gate.set()


def test_submit_returns_before_the_write_and_describes_the_record(gated: GatedPut) -> None:
    writer = AsyncRecordWriter(gated, max_records=4, max_bytes=1 << 30, block_seconds=0.0)
    base = make_base_key("r0-1")
    pending = writer.submit(base, record())
    assert gated.entered.wait(WAIT)
    assert not pending.done  # the put is still blocked: submit did not wait for it
    assert pending.info.base == base and pending.info.fields["hidden"].shape == (4, 24)
    assert pending.info.keys == [f"{base}/hidden", f"{base}/last_hidden"]
    gated.gate.set()
    assert pending.wait(WAIT).info == pending.info
    assert writer.flush(WAIT)
    assert (writer.stats.written, writer.stats.queued_records, writer.stats.queued_bytes) == (1, 0, 0)
    writer.close()


def test_a_full_queue_blocks_then_fails_with_a_counted_reason(gated: GatedPut) -> None:
    waits: list[float] = []
    writer = AsyncRecordWriter(gated, max_records=2, max_bytes=1 << 30, block_seconds=0.2, on_wait=waits.append)
    first = writer.submit(make_base_key("a"), record())
    assert gated.entered.wait(WAIT)  # in flight: still counts against the bound
    second = writer.submit(make_base_key("b"), record())
    with pytest.raises(WriterFullError, match="does not keep up") as exc:
        writer.submit(make_base_key("c"), record())
    assert exc.value.reason == "writer_full"
    assert writer.stats.rejected == 1 and writer.stats.submitted == 2
    gated.gate.set()
    # nothing accepted was dropped
    first.wait(WAIT)
    second.wait(WAIT)
    assert writer.flush(WAIT) and writer.stats.written == 2
    assert waits == []  # the rejected submit never got in, so it is no back-pressure wait
    writer.close()


def test_back_pressure_waits_until_room_and_is_measured(gated: GatedPut) -> None:
    waits: list[float] = []
    writer = AsyncRecordWriter(gated, max_records=1, max_bytes=1 << 30, block_seconds=WAIT, on_wait=waits.append)
    writer.submit(make_base_key("a"), record())
    assert gated.entered.wait(WAIT)
    got: list[PendingWrite] = []
    blocked = threading.Thread(target=lambda: got.append(writer.submit(make_base_key("b"), record())))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive() and not got  # waiting for room
    gated.gate.set()
    blocked.join(WAIT)
    assert len(got) == 1
    got[0].wait(WAIT)
    assert writer.stats.blocked == 1 and len(waits) == 1 and waits[0] > 0
    writer.close()


def test_the_byte_bound_holds_and_an_oversized_record_still_passes_alone(gated: GatedPut) -> None:
    small = record(rows=4)
    big = record(rows=64)
    writer = AsyncRecordWriter(gated, max_records=100, max_bytes=nbytes(small) + 10, block_seconds=0.1)
    writer.submit(make_base_key("a"), small)
    assert gated.entered.wait(WAIT)
    with pytest.raises(WriterFullError):
        writer.submit(make_base_key("b"), small)  # the bytes would exceed the bound
    gated.gate.set()
    assert writer.flush(WAIT)
    pending = writer.submit(make_base_key("c"), big)  # larger than max_bytes, but the queue is empty
    pending.wait(WAIT)
    assert writer.stats.written == 2 and writer.stats.rejected == 1
    writer.close()


def test_queued_records_are_written_in_batches(gated: GatedPut) -> None:
    writer = AsyncRecordWriter(gated, max_records=64, max_bytes=1 << 30, block_seconds=0.0, max_batch_records=3)
    first = writer.submit(make_base_key("first"), record())
    assert gated.entered.wait(WAIT)
    rest = [writer.submit(make_base_key(f"r{i}"), record()) for i in range(5)]
    gated.gate.set()
    for p in [first, *rest]:
        p.wait(WAIT)
    assert [len(b) for b in gated.batches] == [1, 3, 2]
    assert [b for batch in gated.batches for b in batch] == [first.info.base, *[p.info.base for p in rest]]
    writer.close()


@pytest.mark.parametrize("fail", [StoreFullError("store full"), KeyError("a bug")], ids=["store_full", "internal"])
def test_a_failed_write_reaches_the_pending_write_and_the_worker_goes_on(fail: Exception) -> None:
    put = GatedPut(fail=fail)
    put.gate.set()
    done: list[PendingWrite] = []
    writer = AsyncRecordWriter(put, max_records=4, max_bytes=1 << 30, block_seconds=0.0, on_done=done.append)
    bad = writer.submit(make_base_key("bad"), record())
    with pytest.raises(Exception) as exc:
        bad.wait(WAIT)
    reason = "store_full" if isinstance(fail, StoreFullError) else "internal"
    assert getattr(exc.value, "reason", None) == reason
    put.fail = None
    good = writer.submit(make_base_key("good"), record())
    good.wait(WAIT)
    assert writer.flush(WAIT)
    assert [p.info.base for p in done] == [bad.info.base, good.info.base]
    assert (writer.stats.failed, writer.stats.written, writer.stats.queued_records) == (1, 1, 0)
    writer.close()


def test_close_fails_what_is_still_queued_and_refuses_new_records(gated: GatedPut) -> None:
    writer = AsyncRecordWriter(gated, max_records=8, max_bytes=1 << 30, block_seconds=0.0)
    writer.submit(make_base_key("in-flight"), record())
    assert gated.entered.wait(WAIT)
    queued = writer.submit(make_base_key("queued"), record())
    closer = threading.Thread(target=writer.close, kwargs={"timeout": 0.1})
    closer.start()
    closer.join(WAIT)
    with pytest.raises(WriterClosedError):
        queued.wait(WAIT)
    with pytest.raises(WriterClosedError):
        writer.submit(make_base_key("late"), record())
    gated.gate.set()


def test_fields_that_are_no_record_are_refused_at_submit(gated: GatedPut) -> None:
    writer = AsyncRecordWriter(gated, max_records=4, max_bytes=1 << 30, block_seconds=0.0)
    with pytest.raises(ValueError, match="at least one tensor"):
        writer.submit(make_base_key("x"), {"hidden": []})
    assert writer.stats.submitted == 0
    writer.close()


@pytest.mark.mooncake
def test_records_written_asynchronously_read_back_bit_identical(mooncake_master: MooncakeMaster) -> None:
    cfg = mooncake_master.transport_config()
    g = torch.Generator().manual_seed(3)
    with MooncakeTransport(cfg, name="writer") as w, \
            MooncakeTransport(cfg, segment_size=0, name="reader") as reader:
        writer = AsyncRecordWriter(w.put_records, max_records=4, max_bytes=1 << 20, block_seconds=WAIT)
        sent: list[tuple[PendingWrite, dict[str, Any]]] = []
        for i in range(12):
            rows = int(torch.randint(1, 40, (1,), generator=g))
            aux = [torch.randn(rows, 16, generator=g).to(torch.bfloat16) for _ in range(3)]
            last = torch.randn(rows, 16, generator=g).to(torch.bfloat16)
            sent.append((writer.submit(make_base_key(f"w-{i}"), {"hidden": aux, "last_hidden": last}),
                         {"hidden": torch.cat(aux, dim=-1), "last_hidden": last}))
        pool = reader.new_buffer_pool()
        try:
            for pending, want in sent:  # read from the descriptions alone, as the trainer does
                (rec,) = reader.get_records([RecordInfo.from_json(pending.info.to_json())], pool)
                for name, tensor in want.items():
                    assert torch.equal(rec.tensors[name], tensor)
                rec.release()
                reader.delete_records([pending.info.base])
        finally:
            pool.close()
        assert writer.flush(WAIT) and writer.stats.written == 12
        writer.close()
    assert mooncake_master.key_count() == 0
