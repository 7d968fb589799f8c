"""Mooncake store status codes and the transport's exceptions."""

from __future__ import annotations

from enum import IntEnum


class StoreCode(IntEnum):
    """The Mooncake store status codes this project acts on (mooncake-store `ErrorCode`)."""

    OK = 0
    INTERNAL_ERROR = -1
    BUFFER_OVERFLOW = -10
    SEGMENT_NOT_FOUND = -101
    CLIENT_NOT_FOUND = -103
    NO_AVAILABLE_HANDLE = -200  # the store is full
    INVALID_KEY = -400
    WRITE_FAIL = -500
    INVALID_PARAMS = -600  # e.g. a read buffer smaller than the value
    INVALID_WRITE = -700
    INVALID_READ = -701
    REPLICA_IS_NOT_READY = -703
    OBJECT_NOT_FOUND = -704
    OBJECT_ALREADY_EXISTS = -705
    OBJECT_HAS_LEASE = -706
    LEASE_EXPIRED = -707
    REPLICA_IS_GONE = -712
    TRANSFER_FAIL = -800
    RPC_FAIL = -900  # the master is unreachable
    UNAVAILABLE_IN_CURRENT_STATUS = -1010


def code_name(code: int) -> str:
    """`-900` -> "RPC_FAIL (-900)"."""
    try:
        return f"{StoreCode(code).name} ({code})"
    except ValueError:
        return f"code {code}"


# The master (or a segment owner) is unreachable or restarting: retry, the operation may succeed later.
UNAVAILABLE_CODES = frozenset(
    {
        StoreCode.RPC_FAIL,
        StoreCode.UNAVAILABLE_IN_CURRENT_STATUS,
        StoreCode.CLIENT_NOT_FOUND,
        StoreCode.SEGMENT_NOT_FOUND,
        StoreCode.TRANSFER_FAIL,
        StoreCode.WRITE_FAIL,
        StoreCode.REPLICA_IS_NOT_READY,
        StoreCode.INTERNAL_ERROR,
    }
)
FULL_CODES = frozenset({StoreCode.NO_AVAILABLE_HANDLE})
NOT_FOUND_CODES = frozenset({StoreCode.OBJECT_NOT_FOUND, StoreCode.REPLICA_IS_GONE})


class TransportError(RuntimeError):
    """A Mooncake operation failed. `reason` is a short label for metrics."""

    reason = "store_error"

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailableError(TransportError):
    """The Mooncake master (or the segment holding a record) could not be reached in time."""

    reason = "store_unavailable"


class StoreFullError(TransportError):
    """The store stayed full for longer than the put timeout."""

    reason = "store_full"


class RecordNotFoundError(TransportError):
    """A record was not in the store (never written, already deleted, expired, or lost with the master)."""

    reason = "record_not_found"

    def __init__(self, message: str, missing: list[str], code: int | None = None) -> None:
        super().__init__(message, code)
        self.missing = missing


class BufferPoolExhausted(RuntimeError):
    """Every buffer of a pool is held; samples must be released (CapturedSample.release())."""
