"""Where a rank's hidden states come from.

- ``remote`` (production, the embedded pipeline): the capture client of ``dspark_trainer.data.capture_client``
  sends each sample's token ids to a capture server (SGLang plugin or the reference server), which
  writes the tensors to Mooncake; the client fetches them with a bounded window of requests in flight.
- ``inline`` (tiny targets, tests): the rank runs the target itself with Hugging Face transformers.

Both yield the samples in the order they were given, each exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from dspark_trainer.data.batching import CapturedSample
from dspark_trainer.data.stream import TokenizedSample


@dataclass
class TransportStats:
    """Transport counters since the previous ``take_stats`` call."""

    nbytes: int = 0
    get_seconds: list[float] = field(default_factory=list)


class HiddenStateSource(Protocol):
    def iterate(self, samples: Iterable[TokenizedSample]) -> Iterator[CapturedSample]:
        """Captured samples in input order; pulls from ``samples`` only as far as its window allows."""
        ...

    def close(self) -> None: ...


def select_target_hidden(hidden_states: Sequence[torch.Tensor], layer_ids: Sequence[int]) -> torch.Tensor:
    """Concatenate the outputs of ``layer_ids`` (HF ``hidden_states[i + 1]`` is layer i's output,
    ``hidden_states[0]`` the embedding, id -1) along the feature axis."""
    return torch.cat([hidden_states[i + 1] for i in layer_ids], dim=-1)


class InlineSource:
    """Runs the target on this rank (no capture server, no transport)."""

    def __init__(
        self,
        target_dir: str,
        layer_ids: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        need_last_hidden: bool,
    ) -> None:
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype)
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layer_ids = list(layer_ids)
        self.device = device
        self.need_last_hidden = need_last_hidden
        num_layers = int(self.model.config.num_hidden_layers)
        if any(i >= num_layers - 1 for i in self.layer_ids):
            # hidden_states[-1] is the post-norm state in transformers 5, not the last layer's output.
            raise ValueError(f"draft.targetLayerIds: {self.layer_ids} uses the target's last layer")

    @torch.no_grad()
    def capture(self, sample: TokenizedSample) -> CapturedSample:
        ids = torch.tensor([sample.input_ids], dtype=torch.long, device=self.device)
        out = self.model.model(input_ids=ids, output_hidden_states=True)
        hidden = select_target_hidden(out.hidden_states, self.layer_ids)[0].cpu()
        last = out.last_hidden_state[0].cpu() if self.need_last_hidden else None
        return CapturedSample(sample=sample, hidden=hidden, last_hidden=last)

    def iterate(self, samples: Iterable[TokenizedSample]) -> Iterator[CapturedSample]:
        for sample in samples:
            start = time.perf_counter()
            captured = self.capture(sample)
            captured.fetch_seconds = time.perf_counter() - start
            yield captured

    def close(self) -> None:
        return
