"""The transport client over the Mooncake distributed store: batched put / get / delete of records.

One `MooncakeTransport` per process. Capture servers contribute a segment of memory to the
store and write records into it; trainer ranks usually contribute none (``segment_size=0``) and
only read. Every call is blocking and releases the GIL inside Mooncake, so callers run it in
a worker thread. Failures are retried with back-off while they can still succeed:

* store full (``NO_AVAILABLE_HANDLE``): writes wait up to ``putTimeoutSeconds`` (records are
  hard-pinned, so Mooncake never evicts an unread record to make room);
* master unreachable (``RPC_FAIL`` and friends): any call retries for
  ``unavailableTimeoutSeconds``, then raises StoreUnavailableError;
* key not there yet (``OBJECT_NOT_FOUND``): reads retry for ``notFoundTimeoutSeconds``, then raise
  RecordNotFoundError (the record was lost with a restarted master, deleted, or never written).

A write is all-or-nothing per record: if one field cannot be stored, the fields that were are
removed again before the error is raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dspark_trainer.config.transport import TransportConfig
from dspark_trainer.transport.buffers import BufferPool, HostBuffer, align_up
from dspark_trainer.transport.errors import (
    FULL_CODES,
    NOT_FOUND_CODES,
    UNAVAILABLE_CODES,
    RecordNotFoundError,
    StoreCode,
    StoreFullError,
    StoreUnavailableError,
    TransportError,
    code_name,
)
from dspark_trainer.transport.record import (
    HEADER_BYTES,
    RECORD_FIELDS,
    FieldInfo,
    RecordFormatError,
    RecordInfo,
    encode_header,
    field_key,
    minutes_regex,
    payload_nbytes,
    request_regex,
    tensor_from_value,
)
from dspark_trainer.transport.retry import Backoff, Deadline

log = logging.getLogger(__name__)

# A tensor, or parts to concatenate along the last dimension while staging (no temporary copy).
TensorParts = torch.Tensor | Sequence[torch.Tensor]

_PING_KEY = "dspark/__ping__"


def import_store_module() -> Any:
    """Import `mooncake.store`, keeping Mooncake's INFO logging quiet unless GLOG_minloglevel is set."""
    os.environ.setdefault("GLOG_minloglevel", "1")
    try:
        import mooncake.store as store_module
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TransportError(
            "the Mooncake store client is not installed: install the `mooncake-cpu` or `mooncake-cuda` extra "
            f"of dspark-k8s ({exc})"
        ) from exc
    return store_module


@dataclass
class FetchedRecord:
    """One record read into a pooled buffer. The tensors are views into `buffer`: valid until release()."""

    info: RecordInfo
    tensors: dict[str, torch.Tensor]
    nbytes: int
    seconds: float
    buffer: HostBuffer | None = None
    pool: BufferPool | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.buffer is not None and self.pool is not None:
            self.pool.release(self.buffer)
        self.buffer = None


@dataclass
class PutResult:
    info: RecordInfo
    seconds: float


def _parts_shape(parts: TensorParts) -> tuple[torch.dtype, tuple[int, ...], list[torch.Tensor]]:
    if isinstance(parts, torch.Tensor):
        return parts.dtype, tuple(parts.shape), [parts]
    plist = list(parts)
    if not plist:
        raise ValueError("a record field needs at least one tensor")
    dtype = plist[0].dtype
    lead = tuple(plist[0].shape[:-1])
    for p in plist:
        if p.dtype != dtype or tuple(p.shape[:-1]) != lead:
            raise ValueError(
                f"parts of one record field must share dtype and leading dims: {dtype} {lead} vs {p.dtype} "
                f"{tuple(p.shape[:-1])}"
            )
    return dtype, (*lead, sum(int(p.shape[-1]) for p in plist)), plist


def describe_record(base: str, fields: Mapping[str, TensorParts]) -> RecordInfo:
    """The RecordInfo (keys, shapes, dtypes) a write of ``fields`` under ``base`` produces, without writing."""
    finfo: dict[str, FieldInfo] = {}
    for fname, parts in fields.items():
        dtype, shape, _plist = _parts_shape(parts)
        finfo[fname] = FieldInfo(field_key(base, fname), shape, dtype)
    return RecordInfo(base, finfo)


class MooncakeTransport:
    """A connected Mooncake store client that writes, reads and deletes DSpark records."""

    def __init__(
        self,
        config: TransportConfig,
        *,
        segment_size: int | None = None,
        local_buffer_size: int | None = None,
        name: str = "transport",
    ) -> None:
        self.config = config
        self.segment_size = config.global_segment_size if segment_size is None else segment_size
        self.local_buffer_size = config.local_buffer_size if local_buffer_size is None else local_buffer_size
        self.name = name
        self._store: Any = None
        self._module: Any = None
        self._lock = threading.Lock()
        self._put_pool: BufferPool | None = None
        self.local_hostname = config.local_address()
        self.protocol = str(config.resolved_protocol())
        # Called as on_retry(reason, code) whenever an operation backs off and retries (metrics hook).
        self.on_retry: Callable[[str, int], None] | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def connected(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> Any:
        if self._store is None:
            raise TransportError(f"{self.name}: not connected to the Mooncake store (call connect())")
        return self._store

    def connect(self, timeout: float | None = None) -> MooncakeTransport:
        """Set up the store client, retrying while the master is not reachable yet."""
        if self._store is not None:
            return self
        self._module = import_store_module()
        cfg = self.config
        deadline = Deadline(cfg.connect_timeout_seconds if timeout is None else timeout)
        backoff = Backoff(cfg.retry_initial_seconds, max(cfg.retry_max_seconds, 1.0))
        last = 0
        while True:
            store = self._module.MooncakeDistributedStore()
            last = store.setup(
                self.local_hostname,
                cfg.metadata_server,
                int(self.segment_size),
                int(self.local_buffer_size),
                self.protocol,
                cfg.device_names,
                cfg.master_address,
            )
            if last == 0:
                self._store = store
                break
            with contextlib.suppress(Exception):
                store.close()
            if not deadline.sleep(backoff.next_delay()):
                raise StoreUnavailableError(
                    f"{self.name}: could not connect to the Mooncake master at {cfg.master_address} "
                    f"(protocol {self.protocol}, metadata {cfg.metadata_server}): setup returned {code_name(last)}",
                    last,
                )
        self._put_pool = BufferPool(
            register=self._store.register_buffer,
            unregister=self._store.unregister_buffer,
            pin_memory=cfg.pin_memory,
            max_buffers=8,
            name=f"{self.name} staging",
        )
        log.info("%s: connected to Mooncake master %s as %s (%s, segment %d bytes)", self.name,
                 cfg.master_address, self.local_hostname, self.protocol, self.segment_size)
        return self

    def new_buffer_pool(self, max_buffers: int = 16, name: str = "read buffers") -> BufferPool:
        """A pool of host buffers registered with this store, for reads."""
        return BufferPool(
            register=self.store.register_buffer,
            unregister=self.store.unregister_buffer,
            pin_memory=self.config.pin_memory,
            max_buffers=max_buffers,
            name=f"{self.name} {name}",
        )

    def close(self) -> None:
        if self._put_pool is not None:
            self._put_pool.close()
            self._put_pool = None
        if self._store is not None:
            try:
                self._store.close()
            finally:
                self._store = None

    def __enter__(self) -> MooncakeTransport:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _replicate_config(self) -> Any:
        rc = self._module.ReplicateConfig()
        rc.replica_num = self.config.replica_num
        rc.with_hard_pin = self.config.hard_pin
        return rc

    def _backoff(self) -> Backoff:
        return Backoff(self.config.retry_initial_seconds, self.config.retry_max_seconds)

    def _note_retry(self, what: str, code: int, backoff: Backoff) -> None:
        reason = "store_full" if code in FULL_CODES else "record_not_found" if code in NOT_FOUND_CODES else (
            "store_unavailable"
        )
        if backoff.attempt == 0:
            log.warning("%s: %s: %s (%s); retrying with back-off", self.name, what, reason, code_name(code))
        if self.on_retry is not None:
            self.on_retry(reason, code)

    def _unavailable(self, what: str, code: int) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"{self.name}: {what} failed: Mooncake master at {self.config.master_address} unreachable or "
            f"restarting ({code_name(code)}); gave up after {self.config.unavailable_timeout_seconds:g}s",
            code,
        )

    # ----------------------------------------------------------------- health
    def ping(self) -> bool:
        """True when the master answers a cheap query."""
        if self._store is None:
            return False
        return int(self._store.is_exist(_PING_KEY)) in (0, 1)

    # ----------------------------------------------------------------- put
    def put_records(self, records: Sequence[tuple[str, Mapping[str, TensorParts]]]) -> list[PutResult]:
        """Write records in one batch. Each item is (base key, {field: tensor or parts to concatenate}).

        Returns the RecordInfo (keys, shapes, dtypes) of each record. Raises StoreFullError or
        StoreUnavailableError after the configured retries; nothing of a failed batch stays in the store.
        """
        if not records:
            return []
        assert self._put_pool is not None
        t0 = time.perf_counter()
        keys: list[str] = []
        layouts: list[tuple[int, int]] = []  # (offset, nbytes) per key in staging
        infos: list[RecordInfo] = []
        staged: list[tuple[int, torch.dtype, tuple[int, ...], list[torch.Tensor]]] = []
        offset = 0
        for base, fields in records:
            finfo: dict[str, FieldInfo] = {}
            for fname, parts in fields.items():
                dtype, shape, plist = _parts_shape(parts)
                fi = FieldInfo(field_key(base, fname), shape, dtype)
                finfo[fname] = fi
                keys.append(fi.key)
                layouts.append((offset, fi.nbytes))
                staged.append((offset, dtype, shape, plist))
                offset = align_up(offset + fi.nbytes)
            infos.append(RecordInfo(base, finfo))
        buf = self._put_pool.acquire(offset)
        try:
            for off, dtype, shape, plist in staged:
                header = torch.frombuffer(bytearray(encode_header(dtype, shape)), dtype=torch.uint8)
                buf.tensor[off : off + HEADER_BYTES].copy_(header)
                dst = buf.view(off + HEADER_BYTES, payload_nbytes(dtype, shape)).view(dtype).view(shape)
                col = 0
                for p in plist:
                    w = int(p.shape[-1])
                    if len(plist) == 1:
                        dst.copy_(p)
                    else:
                        dst[..., col : col + w].copy_(p)
                    col += w
            self._put_batch(keys, [buf.ptr + off for off, _ in layouts], [n for _, n in layouts])
        finally:
            self._put_pool.release(buf)
        seconds = time.perf_counter() - t0
        return [PutResult(info, seconds) for info in infos]

    def _put_batch(self, keys: list[str], ptrs: list[int], sizes: list[int]) -> None:
        cfg = self.config
        rcfg = self._replicate_config()
        pending = list(range(len(keys)))
        done: list[int] = []
        full_deadline: Deadline | None = None
        unavailable_deadline: Deadline | None = None
        backoff = self._backoff()
        while pending:
            results = self.store.batch_put_from(
                [keys[i] for i in pending], [ptrs[i] for i in pending], [sizes[i] for i in pending], rcfg
            )
            retry: list[int] = []
            worst = 0
            for i, rc in zip(pending, results, strict=True):
                rc = int(rc)
                if rc == 0 or rc == StoreCode.OBJECT_ALREADY_EXISTS:
                    done.append(i)
                elif rc in FULL_CODES or rc in UNAVAILABLE_CODES:
                    retry.append(i)
                    worst = rc
                else:
                    self._remove_quietly([keys[j] for j in done])
                    raise TransportError(f"{self.name}: writing {keys[i]} failed: {code_name(rc)}", rc)
            pending = retry
            if not pending:
                break
            if worst in FULL_CODES:
                full_deadline = full_deadline or Deadline(cfg.put_timeout_seconds)
                deadline = full_deadline
            else:
                unavailable_deadline = unavailable_deadline or Deadline(cfg.unavailable_timeout_seconds)
                deadline = unavailable_deadline
            self._note_retry("writing records", worst, backoff)
            if not deadline.sleep(backoff.next_delay()):
                self._remove_quietly([keys[j] for j in done])
                if worst in FULL_CODES:
                    raise StoreFullError(
                        f"{self.name}: the Mooncake store stayed full for {cfg.put_timeout_seconds:g}s "
                        f"({sum(sizes[i] for i in pending)} bytes waiting); trainers are not fetching fast "
                        "enough or the store is too small (transport.globalSegmentSize)",
                        worst,
                    )
                raise self._unavailable("writing records", worst)

    def _remove_quietly(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            self.store.batch_remove(keys, True)
        except Exception as exc:  # pragma: no cover - best effort
            log.warning("%s: could not remove %d partially written keys: %s", self.name, len(keys), exc)

    # ----------------------------------------------------------------- get
    def _sizes(self, keys: list[str]) -> list[int]:
        """Value sizes of keys (negative store codes for missing keys), retrying an unreachable master."""
        deadline: Deadline | None = None
        backoff = self._backoff()
        while True:
            sizes = [int(self.store.get_size(k)) for k in keys]
            bad = [s for s in sizes if s < 0 and s in UNAVAILABLE_CODES]
            if not bad:
                return sizes
            deadline = deadline or Deadline(self.config.unavailable_timeout_seconds)
            self._note_retry("reading record sizes", bad[0], backoff)
            if not deadline.sleep(backoff.next_delay()):
                raise self._unavailable("reading record sizes", bad[0])

    def get_records(self, infos: Sequence[RecordInfo], pool: BufferPool) -> list[FetchedRecord]:
        """Read whole records into buffers from `pool` (one buffer per record).

        Records without shapes (`RecordInfo.unsized`) are sized with a query first. Raises
        RecordNotFoundError naming the missing records (after `notFoundTimeoutSeconds`),
        StoreUnavailableError, or RecordFormatError; no buffer stays held on error.
        """
        if not infos:
            return []
        cfg = self.config
        t0 = time.perf_counter()
        # Per record: field names, keys, value sizes.
        all_keys = [f.key for info in infos for f in info.fields.values()]
        sizes: dict[str, int] = {}
        for info in infos:
            if info.sized:
                sizes.update({f.key: f.nbytes for f in info.fields.values()})
        unknown = [k for k in all_keys if k not in sizes]
        not_found_deadline: Deadline | None = None
        unavailable_deadline: Deadline | None = None
        backoff = self._backoff()
        while unknown:
            found = self._sizes(unknown)
            missing = []
            for k, s in zip(unknown, found, strict=True):
                if s > 0:
                    sizes[k] = s
                else:
                    missing.append(k)
            unknown = missing
            if unknown:
                not_found_deadline = not_found_deadline or Deadline(cfg.not_found_timeout_seconds)
                self._note_retry("reading records", int(StoreCode.OBJECT_NOT_FOUND), backoff)
                if not not_found_deadline.sleep(backoff.next_delay()):
                    raise self._not_found(infos, set(unknown))
        buffers: list[HostBuffer] = []
        try:
            ptrs: dict[str, int] = {}
            views: dict[str, torch.Tensor] = {}
            for info in infos:
                total = sum(align_up(sizes[f.key]) for f in info.fields.values())
                buf = pool.acquire(total)
                buffers.append(buf)
                off = 0
                for f in info.fields.values():
                    ptrs[f.key] = buf.ptr + off
                    views[f.key] = buf.view(off, sizes[f.key])
                    off = align_up(off + sizes[f.key])
            pending = list(all_keys)
            while pending:
                results = self.store.batch_get_into(pending, [ptrs[k] for k in pending], [sizes[k] for k in pending])
                retry: list[str] = []
                worst = 0
                for k, rc in zip(pending, results, strict=True):
                    rc = int(rc)
                    if rc == sizes[k]:
                        continue
                    if rc >= 0:
                        raise RecordFormatError(f"{k}: read {rc} bytes, expected {sizes[k]}")
                    if rc in NOT_FOUND_CODES or rc in UNAVAILABLE_CODES:
                        retry.append(k)
                        worst = rc if worst == 0 or rc in UNAVAILABLE_CODES else worst
                    elif rc == StoreCode.INVALID_PARAMS:
                        raise RecordFormatError(f"{k}: the stored value is larger than its announced size {sizes[k]}")
                    else:
                        raise TransportError(f"{self.name}: reading {k} failed: {code_name(rc)}", rc)
                pending = retry
                if not pending:
                    break
                self._note_retry("reading records", worst, backoff)
                if worst in UNAVAILABLE_CODES:
                    unavailable_deadline = unavailable_deadline or Deadline(cfg.unavailable_timeout_seconds)
                    if not unavailable_deadline.sleep(backoff.next_delay()):
                        raise self._unavailable("reading records", worst)
                else:
                    not_found_deadline = not_found_deadline or Deadline(cfg.not_found_timeout_seconds)
                    if not not_found_deadline.sleep(backoff.next_delay()):
                        raise self._not_found(infos, set(pending))
            seconds = time.perf_counter() - t0
            out: list[FetchedRecord] = []
            for info, buf in zip(infos, buffers, strict=True):
                tensors: dict[str, torch.Tensor] = {}
                fields: dict[str, FieldInfo] = {}
                for name, f in info.fields.items():
                    t = tensor_from_value(views[f.key], sizes[f.key])
                    if info.sized and (tuple(t.shape) != f.shape or t.dtype != f.dtype):
                        raise RecordFormatError(
                            f"{f.key}: stored {t.dtype} {tuple(t.shape)} but the capture server announced "
                            f"{f.dtype} {f.shape}"
                        )
                    tensors[name] = t
                    fields[name] = FieldInfo(f.key, tuple(t.shape), t.dtype)
                nbytes = sum(sizes[f.key] for f in info.fields.values())
                out.append(FetchedRecord(RecordInfo(info.base, fields), tensors, nbytes, seconds, buf, pool))
            buffers = []
            return out
        finally:
            for buf in buffers:
                pool.release(buf)

    def _not_found(self, infos: Sequence[RecordInfo], missing_keys: set[str]) -> RecordNotFoundError:
        missing = [info.base for info in infos if any(f.key in missing_keys for f in info.fields.values())]
        return RecordNotFoundError(
            f"{self.name}: record(s) not in the Mooncake store after {self.config.not_found_timeout_seconds:g}s: "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} (never written, already fetched, "
            "expired, or lost with a restarted master)",
            missing,
            int(StoreCode.OBJECT_NOT_FOUND),
        )

    # ----------------------------------------------------------------- delete
    def delete_records(self, bases: Sequence[str], fields: Sequence[str] = RECORD_FIELDS) -> int:
        """Remove records (all their fields); keys already gone are fine. Returns the keys removed."""
        keys = [field_key(b, f) for b in bases for f in fields]
        if not keys:
            return 0
        deadline: Deadline | None = None
        backoff = self._backoff()
        removed = 0
        while keys:
            results = [int(r) for r in self.store.batch_remove(keys, True)]
            retry = [k for k, rc in zip(keys, results, strict=True) if rc in UNAVAILABLE_CODES]
            removed += sum(1 for rc in results if rc == 0)
            for k, rc in zip(keys, results, strict=True):
                if rc not in (0, *NOT_FOUND_CODES) and rc not in UNAVAILABLE_CODES:
                    log.warning("%s: removing %s returned %s", self.name, k, code_name(rc))
            keys = retry
            if keys:
                deadline = deadline or Deadline(self.config.unavailable_timeout_seconds)
                self._note_retry("deleting records", results[0], backoff)
                if not deadline.sleep(backoff.next_delay()):
                    raise self._unavailable("deleting records", results[0])
        return removed

    def _remove_regex(self, regex: str, what: str) -> int:
        deadline: Deadline | None = None
        backoff = self._backoff()
        while True:
            rc = int(self.store.remove_by_regex(regex, True))
            if rc >= 0:
                return rc
            if rc in NOT_FOUND_CODES:
                return 0
            if rc not in UNAVAILABLE_CODES:
                raise TransportError(f"{self.name}: {what} failed: {code_name(rc)}", rc)
            deadline = deadline or Deadline(self.config.unavailable_timeout_seconds)
            self._note_retry(what, rc, backoff)
            if not deadline.sleep(backoff.next_delay()):
                raise self._unavailable(what, rc)

    def delete_request(self, request_id: str) -> int:
        """Remove every record ever written for one request id (all attempts). Returns the keys removed."""
        return self._remove_regex(request_regex(request_id), f"deleting records of request {request_id}")

    def delete_minutes(self, minutes: Sequence[int]) -> int:
        """Remove every record written in these Unix minutes (the TTL janitor)."""
        removed = 0
        for i in range(0, len(minutes), 256):
            removed += self._remove_regex(minutes_regex(minutes[i : i + 256]), "expiring old records")
        return removed

    def exists(self, key: str) -> bool:
        rc = int(self.store.is_exist(key))
        if rc < 0:
            raise StoreUnavailableError(f"{self.name}: checking {key} failed: {code_name(rc)}", rc)
        return rc == 1
