"""A small stand-in for the DSpark model and loss that implements the runtime's DraftAPI, so the
runtime (FSDP2, checkpoints, resume, data order, metrics) is tested on its own. Loaded in torchrun
workers through DSPARK_DRAFT_API=standin_draft:StandinDraftAPI (with this directory on PYTHONPATH)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from dspark_trainer.config.training import TrainerConfig
from dspark_trainer.data.batching import MicroBatch
from dspark_trainer.runtime.draft_api import Quality
from torch import nn


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.proj(h))


class StandinDraft(nn.Module):
    def __init__(self, vocab: int, hidden: int, num_ctx: int, num_layers: int = 2) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.fc = nn.Linear(num_ctx * hidden, hidden, bias=False)
        self.layers = nn.ModuleList([Block(hidden) for _ in range(num_layers)])
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.embed_tokens.weight.requires_grad_(False)
        self.lm_head.weight.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids) + self.fc(hidden)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(h)


@dataclass
class Prepared:
    batch: MicroBatch
    weights: torch.Tensor  # [B, T-1]: position t predicts token t+1


class StandinDraftAPI:
    def build_model(
        self, config: TrainerConfig, target_dir: str, layer_ids: Sequence[int], device: torch.device
    ) -> nn.Module:
        cfg = json.loads((Path(target_dir) / "config.json").read_text())
        return StandinDraft(cfg["vocab_size"], cfg["hidden_size"], len(layer_ids)).to(device)

    def decoder_layers(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.layers)  # type: ignore[arg-type]

    def prepare(self, model: nn.Module, batch: MicroBatch) -> Prepared:
        mask = batch.loss_mask[:, 1:].to(torch.float32)
        return Prepared(batch=batch, weights=mask)

    def denominator(self, prepared: Prepared) -> torch.Tensor:
        return prepared.weights.sum()

    def loss_and_stats(
        self, model: nn.Module, prepared: Prepared, global_denominator: torch.Tensor, world_size: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = prepared.batch
        logits = model(b.input_ids, b.hidden).float()[:, :-1]
        labels = b.input_ids[:, 1:]
        ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        w = prepared.weights.reshape(-1)
        num = (ce * w).sum()
        correct = ((logits.argmax(-1).reshape(-1) == labels.reshape(-1)).float() * w).sum()
        loss = num / global_denominator * world_size
        return loss, {"ce_num": num.detach(), "correct": correct.detach(), "weight": w.sum().detach()}

    def summarize(self, stats: Mapping[str, torch.Tensor], global_denominator: float) -> Quality:
        weight = max(float(stats["weight"]), 1e-9)
        ce = float(stats["ce_num"]) / weight
        acc = float(stats["correct"]) / weight
        return Quality(loss={"total": ce, "ce": ce, "l1": 0.0, "confidence": 0.0}, accept_rate=[acc],
                       tau=1.0 + acc, acc=[acc], sim_acc_len=acc)

    def export(self, full_state: Mapping[str, torch.Tensor], config: TrainerConfig, target_dir: str,
               layer_ids: Sequence[int], output_dir: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in full_state.items()}, str(output_dir / "model.safetensors"))
        (output_dir / "config.json").write_text(json.dumps({"standin": True, "target_layer_ids": list(layer_ids)}))
