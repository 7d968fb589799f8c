"""What the runtime needs from the DSpark model and loss, in one narrow interface.

The runtime never touches model internals: it builds the draft, learns which submodules are the
decoder layers (for FSDP2), prepares a micro-batch (anchor sampling, whose loss weights give the
local loss denominator), computes the loss against the GLOBAL denominator (summed over ranks and
micro-batches) plus sum-reducible statistics, turns summed statistics into metrics, and exports.
``dspark_trainer.runtime.draft_dspark`` implements it with ``dspark_trainer.model`` and
``dspark_trainer.loss``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from dspark_trainer.config.job import JobConfig
from dspark_trainer.data.batching import MicroBatch


@dataclass
class Quality:
    """Training or eval metrics of one step (or one evaluation), aggregated over ranks."""

    loss: dict[str, float]  # term -> value; terms: total, ce, l1, confidence
    accept_rate: list[float] = field(default_factory=list)  # per draft position
    tau: float = 0.0
    acc: list[float] = field(default_factory=list)  # per draft position
    sim_acc_len: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class DraftAPI(Protocol):
    """The model/loss operations of one training run."""

    def build_model(
        self, config: JobConfig, target_dir: str, layer_ids: Sequence[int], device: torch.device
    ) -> torch.nn.Module:
        """The draft in fp32 on ``device`` (initialised from the torch RNG, or from ``draft.initFrom``);
        frozen parameters (embedding, LM head) have requires_grad False."""
        ...

    def decoder_layers(self, model: torch.nn.Module) -> Sequence[torch.nn.Module]:
        """The submodules FSDP2 shards one by one."""
        ...

    def prepare(self, model: torch.nn.Module, batch: MicroBatch) -> Any:
        """Per-micro-batch preparation before the forward (anchor sampling, loss weights)."""
        ...

    def denominator(self, prepared: Any) -> torch.Tensor:
        """This micro-batch's loss denominator (sum of position weights), a scalar float tensor."""
        ...

    def loss_and_stats(
        self, model: torch.nn.Module, prepared: Any, global_denominator: torch.Tensor, world_size: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to backward, statistics that are summed over micro-batches and ranks).

        The loss is this micro-batch's weighted sum over the global denominator, multiplied by
        ``world_size`` to undo the mean the gradient reduction takes."""
        ...

    def summarize(self, stats: Mapping[str, torch.Tensor], global_denominator: float) -> Quality:
        """Metrics from statistics summed over every micro-batch of every rank."""
        ...

    def export(self, full_state: Mapping[str, torch.Tensor], config: JobConfig, target_dir: str,
               layer_ids: Sequence[int], output_dir: Path) -> None:
        """Write the DSpark checkpoint (config.json + model.safetensors) from a full, unsharded state dict."""
        ...
