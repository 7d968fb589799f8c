"""Reusable host buffers registered with the Mooncake store (pinned when CUDA is there).

Reads go straight into these buffers (`batch_get_into`) and writes go out of them
(`batch_put_from`); over RDMA the store can only move data to and from registered memory, so
buffers are registered once when they are allocated and unregistered when the pool drops them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from dspark_trainer.transport.errors import BufferPoolExhausted

log = logging.getLogger(__name__)

ALIGN = 64
_MIN_CAPACITY = 1 << 20  # 1 MiB


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


def _round_capacity(nbytes: int) -> int:
    """Grow in steps of 1/8 of the next power of two, so records of similar size share buffers."""
    n = max(nbytes, _MIN_CAPACITY)
    step = max(_MIN_CAPACITY, (1 << (n - 1).bit_length()) // 8)
    return (n + step - 1) // step * step


def pinned_memory_available() -> bool:
    return torch.cuda.is_available()


class HostBuffer:
    """One contiguous uint8 host buffer; `tensor[:n]` is what a transfer touches."""

    def __init__(self, capacity: int, pin: bool) -> None:
        self.capacity = capacity
        self.pinned = pin
        self.tensor = torch.empty(capacity, dtype=torch.uint8, pin_memory=pin)
        self.ptr = int(self.tensor.data_ptr())
        self.registered = False
        self.in_use = False

    def view(self, offset: int, nbytes: int) -> torch.Tensor:
        return self.tensor[offset : offset + nbytes]


class BufferPool:
    """A bounded pool of registered host buffers.

    `acquire(n)` hands out a free buffer of at least n bytes (the smallest that fits), allocating
    one while the pool has fewer than `max_buffers`, or replacing the largest free buffer that is
    too small. A buffer is reused only after `release()`; when every buffer is held,
    `acquire` raises BufferPoolExhausted (the holder forgot to release) rather than growing
    without bound.
    """

    def __init__(
        self,
        *,
        register: Callable[[int, int], int] | None = None,
        unregister: Callable[[int], int] | None = None,
        pin_memory: bool = True,
        max_buffers: int = 16,
        name: str = "buffers",
    ) -> None:
        self._register = register
        self._unregister = unregister
        self._pin = pin_memory and pinned_memory_available()
        self.max_buffers = max_buffers
        self.name = name
        self._buffers: list[HostBuffer] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pinned(self) -> bool:
        return self._pin

    def _new(self, nbytes: int) -> HostBuffer:
        buf = HostBuffer(_round_capacity(nbytes), self._pin)
        if self._register is not None:
            rc = self._register(buf.ptr, buf.capacity)
            if rc != 0:
                raise RuntimeError(f"{self.name}: registering a {buf.capacity}-byte buffer with Mooncake failed ({rc})")
            buf.registered = True
        return buf

    def _drop(self, buf: HostBuffer) -> None:
        if buf.registered and self._unregister is not None:
            rc = self._unregister(buf.ptr)
            if rc != 0:
                log.warning("%s: unregistering a buffer from Mooncake returned %s", self.name, rc)
            buf.registered = False

    def acquire(self, nbytes: int) -> HostBuffer:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: buffer pool is closed")
            free = [b for b in self._buffers if not b.in_use]
            fitting = [b for b in free if b.capacity >= nbytes]
            if fitting:
                buf = min(fitting, key=lambda b: b.capacity)
            elif len(self._buffers) < self.max_buffers:
                buf = self._new(nbytes)
                self._buffers.append(buf)
            elif free:
                old = max(free, key=lambda b: b.capacity)
                self._drop(old)
                self._buffers.remove(old)
                buf = self._new(nbytes)
                self._buffers.append(buf)
            else:
                raise BufferPoolExhausted(
                    f"{self.name}: all {self.max_buffers} buffers are held; release captured samples "
                    "(CapturedSample.release()) once they are consumed"
                )
            buf.in_use = True
            return buf

    def release(self, buf: HostBuffer) -> None:
        with self._lock:
            buf.in_use = False
            if self._closed:
                self._drop(buf)

    @property
    def in_use(self) -> int:
        with self._lock:
            return sum(b.in_use for b in self._buffers)

    @property
    def allocated_bytes(self) -> int:
        with self._lock:
            return sum(b.capacity for b in self._buffers)

    def close(self) -> None:
        """Unregister and drop every free buffer; held ones are dropped when released."""
        with self._lock:
            self._closed = True
            for buf in list(self._buffers):
                if not buf.in_use:
                    self._drop(buf)
                    self._buffers.remove(buf)
