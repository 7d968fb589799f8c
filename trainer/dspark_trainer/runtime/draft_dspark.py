"""The runtime's ``DraftAPI`` implemented with the DSpark model (``dspark_trainer.model``) and loss
(``dspark_trainer.loss``).

The model's forward computes the loss (under FSDP2 the root's LM head and Markov ``W2`` are only
gathered inside the root forward); the global denominator is passed as a Python float so FSDP2's
mixed-precision input cast cannot round it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dspark_trainer.config.job import JobConfig
from dspark_trainer.data.batching import MicroBatch
from dspark_trainer.loss.dspark_loss import LossWeights
from dspark_trainer.loss.metrics import summarize
from dspark_trainer.loss.weights import local_denominator
from dspark_trainer.model.anchors import sample_anchors
from dspark_trainer.model.api import build_draft_model
from dspark_trainer.model.checkpoint import export_checkpoint
from dspark_trainer.model.config import DSparkModelConfig
from dspark_trainer.model.serving import SERVING_DTYPES
from dspark_trainer.runtime.draft_api import Quality


@dataclass
class Prepared:
    batch: MicroBatch
    anchors: torch.Tensor
    keep: torch.Tensor
    denominator: torch.Tensor


class DSparkDraftAPI:
    """Builds, steps and exports the DSpark draft for the runtime."""

    def __init__(self) -> None:
        self.model_config: DSparkModelConfig | None = None
        self.alphas = LossWeights()

    def build_model(
        self, config: JobConfig, target_dir: str, layer_ids: Sequence[int], device: torch.device
    ) -> torch.nn.Module:
        model = build_draft_model(  # initialised from the torch RNG (seeded by the runtime)
            target_dir, config.draft, device=device, seed=None, target_layer_ids=list(layer_ids),
            strict_init_from=False,
        )
        self.model_config = model.config
        self.alphas = model.loss_weights
        return model

    def decoder_layers(self, model: torch.nn.Module) -> Sequence[torch.nn.Module]:
        assert isinstance(model.layers, torch.nn.ModuleList)
        return list(model.layers)

    def prepare(self, model: torch.nn.Module, batch: MicroBatch) -> Prepared:
        cfg = self.model_config
        assert cfg is not None, "build_model first"
        anchors, keep = sample_anchors(batch.loss_mask, cfg.num_anchors, seeds=batch.seeds or None)
        denom = local_denominator(batch.loss_mask, anchors, keep, cfg.block_size, cfg.gamma)
        return Prepared(batch=batch, anchors=anchors, keep=keep, denominator=denom)

    def denominator(self, prepared: Prepared) -> torch.Tensor:
        return prepared.denominator

    def loss_and_stats(
        self, model: torch.nn.Module, prepared: Prepared, global_denominator: torch.Tensor, world_size: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = prepared.batch
        out = model(
            b.input_ids, b.hidden, b.loss_mask, prepared.anchors, prepared.keep, b.last_hidden,
            denominator=float(global_denominator), world_size=world_size,
        )
        assert out.loss is not None
        return out.loss, out.stats

    def summarize(self, stats: Mapping[str, torch.Tensor], global_denominator: float) -> Quality:
        m = summarize(stats, self.alphas)
        extra = dict(m.extra)
        for name in ("confidence_abs_error", "confidence_bias", "confidence_cum_bias"):
            value = getattr(m, name)
            if value is not None:
                extra[name] = float(value)
        return Quality(
            loss=dict(m.loss), accept_rate=list(m.accept_rate or []), tau=float(m.tau or 0.0), acc=list(m.acc),
            sim_acc_len=float(m.sim_acc_len), extra=extra,
        )

    def export(self, full_state: Mapping[str, torch.Tensor], config: JobConfig, target_dir: str,
               layer_ids: Sequence[int], output_dir: Path) -> None:
        cfg = self.model_config
        assert cfg is not None, "build_model first"
        export_checkpoint(full_state, cfg, output_dir, dtype=SERVING_DTYPES[config.export.dtype],
                          include_frozen=config.export.include_frozen_weights)
