"""Hidden states from the capture servers, through the capture client (``data/capture_client.py``):
a bounded window of requests in flight per rank, in-order, exactly-once delivery, records fetched
from Mooncake and deleted there.

CPU: the tensors are copied out of the client's pooled read buffer before they are handed on, so the
buffer is free again at once.

CUDA: the client's read buffers are pinned, so the states go straight from the read buffer to the GPU
with ``non_blocking=True`` on a side CUDA stream (no host copy, no synchronous pageable copy on the
default stream). An event is recorded after the copy; the compute stream waits on it (on the GPU, the
CPU does not block) and the tensors are marked as used by the compute stream. The read buffer goes
back to the pool once its copy has finished (checked at every sample; the oldest is waited for when
more than ``MAX_PENDING`` are outstanding). A step's samples are all pulled before its first forward,
so the copies of micro-batches 2.. run while micro-batch 1 computes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from dspark_trainer.config.job import JobConfig
from dspark_trainer.data.batching import CapturedSample
from dspark_trainer.data.capture_client import CaptureClient
from dspark_trainer.data.capture_client import CapturedSample as ClientSample
from dspark_trainer.data.stream import TokenizedSample

MAX_PENDING = 8  # read buffers whose device copy may still be in flight


class RemoteSource:
    """One capture client per rank, shared by the training stream and the evaluations."""

    def __init__(
        self, config: JobConfig, layer_ids: list[int], need_last_hidden: bool, rank: int,
        device: torch.device | None = None,
    ) -> None:
        self.need_last_hidden = need_last_hidden
        self.layer_ids = layer_ids
        self.device = device if device is not None and device.type == "cuda" else None
        self.copy_stream: Any = torch.cuda.Stream(self.device) if self.device is not None else None
        self._pending: deque[tuple[Any, ClientSample]] = deque()
        self.client = CaptureClient(config.capture, config.transport, server_api=config.capture_server_api).start()

    def iterate(self, samples: Iterable[TokenizedSample]) -> Iterator[CapturedSample]:
        for captured in self.client.stream(samples):
            sample = captured.source
            assert isinstance(sample, TokenizedSample)
            if self.device is None:
                captured.materialize()
                hidden, last = captured.hidden, captured.last_hidden
            else:
                hidden, last = self._to_device(captured)
            yield CapturedSample(
                sample=sample,
                hidden=hidden,
                last_hidden=last if self.need_last_hidden else None,
                fetch_seconds=captured.fetch_seconds,
                nbytes=captured.nbytes,
            )

    def _to_device(self, captured: ClientSample) -> tuple[torch.Tensor, torch.Tensor]:
        """Pinned read buffer -> GPU on the side stream; the compute stream waits on the copy's event."""
        assert self.device is not None
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            hidden = captured.hidden.to(self.device, non_blocking=True)
            last = captured.last_hidden.to(self.device, non_blocking=True) if self.need_last_hidden else hidden[:0]
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        compute.wait_event(event)
        hidden.record_stream(compute)
        last.record_stream(compute)
        self._pending.append((event, captured))
        self._release_finished()
        return hidden, last

    def _release_finished(self, wait_all: bool = False) -> None:
        while self._pending:
            event, captured = self._pending[0]
            if wait_all or len(self._pending) > MAX_PENDING:
                event.synchronize()
            elif not event.query():
                break
            self._pending.popleft()
            captured.release()

    def close(self) -> None:
        self._release_finished(wait_all=True)
        self.client.close()
