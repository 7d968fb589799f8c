"""The Mooncake record of one captured sample, and the key scheme.

A record is two Mooncake values under one base key::

    {base}/hidden        aux hidden states  [T, L*H]
    {base}/last_hidden   final hidden state [T, H] (after the target's final norm)

Each value is self-describing: a 64-byte header followed by the raw tensor bytes (C order)::

    offset  size  field
         0     4  magic b"DSPK"
         4     2  format version (1), little endian
         6     2  dtype code (see DTYPE_CODES)
         8     4  ndim (1..5)
        12     4  reserved (0)
        16    40  shape, 5 x int64 (unused dims 0)
        56     8  payload bytes

so a reader needs nothing but the key. The payload starts 64 bytes in, which keeps it aligned
for any dtype. Base keys are ``dspark/{minute}/{request_id}/{nonce}``: ``minute`` is the
Unix minute of the write (the TTL janitor deletes whole old minutes with one regex),
``request_id`` is the client's id for one sample submission (a retry keeps it, so stale
duplicates of a sample can be found by regex), and ``nonce`` is fresh per attempt, so a
retry never collides with an earlier write.
"""

from __future__ import annotations

import math
import re
import secrets
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

MAGIC = b"DSPK"
FORMAT_VERSION = 1
HEADER_BYTES = 64
MAX_NDIM = 5
_HEADER = struct.Struct("<4sHHII5qQ")
assert _HEADER.size == HEADER_BYTES

KEY_PREFIX = "dspark"
RECORD_FIELDS: tuple[str, ...] = ("hidden", "last_hidden")

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.bfloat16: 1,
    torch.float16: 2,
    torch.float32: 3,
    torch.float64: 4,
    torch.uint8: 5,
    torch.int8: 6,
    torch.int32: 7,
    torch.int64: 8,
}
CODE_DTYPES: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}
DTYPE_NAMES: dict[torch.dtype, str] = {dt: str(dt).removeprefix("torch.") for dt in DTYPE_CODES}
NAME_DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_NAMES.items()}

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BASE_RE = re.compile(r"^dspark/(\d+)/([A-Za-z0-9._:-]{1,128})/([A-Za-z0-9]{1,64})$")


class RecordFormatError(ValueError):
    """A value in the store is not a record of this format (bad magic, version, dtype or size)."""


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16"."""
    if dtype not in DTYPE_NAMES:
        raise RecordFormatError(f"dtype {dtype} is not supported in records")
    return DTYPE_NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    """"bfloat16" -> `torch.bfloat16`."""
    if name not in NAME_DTYPES:
        raise RecordFormatError(f"unknown dtype name {name!r}; known: {sorted(NAME_DTYPES)}")
    return NAME_DTYPES[name]


def payload_nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    """Bytes of the tensor data of one value."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(math.prod(shape)) * itemsize


def value_nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    """Bytes of one stored value: header + payload."""
    return HEADER_BYTES + payload_nbytes(dtype, shape)


def encode_header(dtype: torch.dtype, shape: Sequence[int]) -> bytes:
    """The 64-byte header of a value holding a tensor of this dtype and shape."""
    if dtype not in DTYPE_CODES:
        raise RecordFormatError(f"dtype {dtype} is not supported in records")
    if not 1 <= len(shape) <= MAX_NDIM:
        raise RecordFormatError(f"a record tensor needs 1..{MAX_NDIM} dims, got shape {tuple(shape)}")
    if any(int(d) < 0 for d in shape):
        raise RecordFormatError(f"negative dimension in shape {tuple(shape)}")
    dims = [int(d) for d in shape] + [0] * (MAX_NDIM - len(shape))
    return _HEADER.pack(MAGIC, FORMAT_VERSION, DTYPE_CODES[dtype], len(shape), 0, *dims, payload_nbytes(dtype, shape))


def decode_header(header: bytes | bytearray | memoryview) -> tuple[torch.dtype, tuple[int, ...], int]:
    """(dtype, shape, payload bytes) from a value's first 64 bytes; RecordFormatError if it is not one."""
    if len(header) < HEADER_BYTES:
        raise RecordFormatError(f"value too short for a record header ({len(header)} < {HEADER_BYTES} bytes)")
    magic, version, code, ndim, _reserved, *rest = _HEADER.unpack(bytes(header[:HEADER_BYTES]))
    dims, nbytes = rest[:MAX_NDIM], rest[MAX_NDIM]
    if magic != MAGIC:
        raise RecordFormatError(f"bad record magic {magic!r} (expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise RecordFormatError(
            f"record format version {version} is not supported (this reader knows {FORMAT_VERSION})"
        )
    if code not in CODE_DTYPES:
        raise RecordFormatError(f"unknown dtype code {code} in record header")
    if not 1 <= ndim <= MAX_NDIM:
        raise RecordFormatError(f"bad ndim {ndim} in record header")
    dtype = CODE_DTYPES[code]
    shape = tuple(int(d) for d in dims[:ndim])
    if payload_nbytes(dtype, shape) != nbytes:
        raise RecordFormatError(f"record header says {nbytes} payload bytes but shape {shape} x {dtype} needs "
                                f"{payload_nbytes(dtype, shape)}")
    return dtype, shape, int(nbytes)


def tensor_from_value(buf: torch.Tensor, nbytes: int | None = None) -> torch.Tensor:
    """A view of the tensor stored in a value held in a uint8 buffer (header first); no copy."""
    if buf.dtype != torch.uint8 or buf.dim() != 1:
        raise TypeError("tensor_from_value needs a 1-D uint8 buffer")
    header = buf[:HEADER_BYTES].numpy().tobytes() if buf.device.type == "cpu" else bytes(buf[:HEADER_BYTES].tolist())
    dtype, shape, payload = decode_header(header)
    if nbytes is not None and nbytes != HEADER_BYTES + payload:
        raise RecordFormatError(f"value is {nbytes} bytes but its header describes {HEADER_BYTES + payload}")
    if buf.numel() < HEADER_BYTES + payload:
        raise RecordFormatError(f"buffer of {buf.numel()} bytes is shorter than the record ({HEADER_BYTES + payload})")
    return buf[HEADER_BYTES : HEADER_BYTES + payload].view(dtype).view(shape)


def validate_request_id(request_id: object) -> str:
    """A request id is 1-128 characters of ``A-Z a-z 0-9 . _ : -``; ValueError naming the problem."""
    if not isinstance(request_id, str):
        raise ValueError(f"request_id must be a string, got {type(request_id).__name__}")
    if not _REQUEST_ID_RE.match(request_id):
        raise ValueError(
            f"request_id {request_id[:140]!r} is invalid: use 1-128 characters from A-Z a-z 0-9 . _ : -"
        )
    return request_id


def new_nonce() -> str:
    """A fresh random nonce (16 hex characters)."""
    return secrets.token_hex(8)


def minute_bucket(now: float | None = None) -> int:
    """The Unix minute used in keys."""
    return int((time.time() if now is None else now) // 60)


def make_base_key(request_id: str, nonce: str | None = None, now: float | None = None) -> str:
    """``dspark/{minute}/{request_id}/{nonce}``: a fresh base key for one write of one sample."""
    validate_request_id(request_id)
    nonce = nonce or new_nonce()
    if not re.fullmatch(r"[A-Za-z0-9]{1,64}", nonce):
        raise ValueError(f"nonce {nonce!r} must be 1-64 alphanumeric characters")
    return f"{KEY_PREFIX}/{minute_bucket(now)}/{request_id}/{nonce}"


def parse_base_key(base: str) -> tuple[int, str, str]:
    """(minute, request_id, nonce) of a base key; ValueError if it is not one."""
    m = _BASE_RE.match(base)
    if not m:
        raise ValueError(f"{base!r} is not a dspark record key (dspark/<minute>/<request_id>/<nonce>)")
    return int(m.group(1)), m.group(2), m.group(3)


def field_key(base: str, field: str) -> str:
    """The Mooncake key of one field of a record."""
    return f"{base}/{field}"


def record_keys(base: str, fields: Iterable[str] = RECORD_FIELDS) -> list[str]:
    """All Mooncake keys of one record."""
    return [field_key(base, f) for f in fields]


def request_regex(request_id: str) -> str:
    """A regex matching every key written for one request id (all attempts, all minutes)."""
    validate_request_id(request_id)
    return rf"^{KEY_PREFIX}/[0-9]+/{re.escape(request_id)}/[A-Za-z0-9]+/"


def minutes_regex(minutes: Sequence[int]) -> str:
    """A regex matching every key written in any of these Unix minutes."""
    if not minutes:
        raise ValueError("minutes_regex needs at least one minute")
    alternatives = "|".join(str(int(m)) for m in minutes)
    return rf"^{KEY_PREFIX}/({alternatives})/"


@dataclass(frozen=True)
class FieldInfo:
    """Where one tensor of a record lives and what it is."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def payload_nbytes(self) -> int:
        return payload_nbytes(self.dtype, self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored value (header + payload)."""
        return HEADER_BYTES + self.payload_nbytes

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape), "dtype": dtype_name(self.dtype), "nbytes": self.nbytes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldInfo:
        info = cls(
            key=str(data["key"]), shape=tuple(int(d) for d in data["shape"]), dtype=dtype_from_name(data["dtype"])
        )
        if "nbytes" in data and int(data["nbytes"]) != info.nbytes:
            raise RecordFormatError(f"{info.key}: nbytes {data['nbytes']} does not match shape/dtype ({info.nbytes})")
        return info


@dataclass(frozen=True)
class RecordInfo:
    """The keys, shapes and dtypes of one record: what a capture server answers."""

    base: str
    fields: dict[str, FieldInfo]

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.fields.values())

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.fields.values()]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.base, "records": {name: f.to_json() for name, f in self.fields.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordInfo:
        base = str(data["key"])
        records = data["records"]
        if not isinstance(records, Mapping):
            raise RecordFormatError("`records` must be a mapping of field name -> {key, shape, dtype, nbytes}")
        fields = {str(name): FieldInfo.from_json(f) for name, f in records.items()}
        for name, f in fields.items():
            if f.key != field_key(base, name):
                raise RecordFormatError(f"record field {name!r} has key {f.key!r}, expected {field_key(base, name)!r}")
        return cls(base=base, fields=fields)

    @classmethod
    def unsized(cls, base: str, fields: Iterable[str] = RECORD_FIELDS) -> RecordInfo:
        """A record whose shapes are not known yet (the reader asks the store for sizes)."""
        return cls(base=base, fields={f: FieldInfo(field_key(base, f), (), torch.uint8) for f in fields})

    @property
    def sized(self) -> bool:
        return all(f.shape for f in self.fields.values())
