"""Hidden states from the capture servers, through issue 4's capture client (``data/capture_client.py``):
a bounded window of requests in flight per rank, in-order, exactly-once delivery, records fetched
from Mooncake and deleted there. The tensors are copied out of the client's pooled read buffer
before they are handed on, so the buffer is free again at once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from dspark_trainer.config.training import TrainerConfig
from dspark_trainer.data.batching import CapturedSample
from dspark_trainer.data.capture_client import CaptureClient
from dspark_trainer.data.stream import TokenizedSample


class RemoteSource:
    """One capture client per rank, shared by the training stream and the evaluations."""

    def __init__(self, config: TrainerConfig, layer_ids: list[int], need_last_hidden: bool, rank: int) -> None:
        self.need_last_hidden = need_last_hidden
        self.layer_ids = layer_ids
        self.client = CaptureClient(config.capture, config.transport).start()

    def iterate(self, samples: Iterable[TokenizedSample]) -> Iterator[CapturedSample]:
        for captured in self.client.stream(samples):
            sample = captured.source
            assert isinstance(sample, TokenizedSample)
            captured.materialize()
            yield CapturedSample(
                sample=sample,
                hidden=captured.hidden,
                last_hidden=captured.last_hidden if self.need_last_hidden else None,
                fetch_seconds=captured.fetch_seconds,
                nbytes=captured.nbytes,
            )

    def close(self) -> None:
        self.client.close()
