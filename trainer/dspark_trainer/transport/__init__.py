"""Mooncake transport of captured hidden states: record format, store client, buffers, janitor."""

from dspark_trainer.transport.buffers import BufferPool, HostBuffer
from dspark_trainer.transport.errors import (
    BufferPoolExhausted,
    RecordNotFoundError,
    StoreCode,
    StoreFullError,
    StoreUnavailableError,
    TransportError,
)
from dspark_trainer.transport.janitor import RecordJanitor
from dspark_trainer.transport.mooncake_client import FetchedRecord, MooncakeTransport, PutResult
from dspark_trainer.transport.record import (
    RECORD_FIELDS,
    FieldInfo,
    RecordFormatError,
    RecordInfo,
    make_base_key,
)

__all__ = [
    "RECORD_FIELDS",
    "BufferPool",
    "BufferPoolExhausted",
    "FetchedRecord",
    "FieldInfo",
    "HostBuffer",
    "MooncakeTransport",
    "PutResult",
    "RecordFormatError",
    "RecordInfo",
    "RecordJanitor",
    "RecordNotFoundError",
    "StoreCode",
    "StoreFullError",
    "StoreUnavailableError",
    "TransportError",
    "make_base_key",
]
