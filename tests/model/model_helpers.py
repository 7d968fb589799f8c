"""Helpers of the model tests: tiny resolved configs and random micro-batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model.anchors import sample_anchors
from dspark_trainer.model.config import DSparkModelConfig, resolve_model_config
from dspark_trainer.model.draft import DSparkDraftModel

HIDDEN = 32
VOCAB = 96


def target_hf_config(hidden: int = HIDDEN, layers: int = 8, vocab: int = VOCAB) -> dict[str, Any]:
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden // 4,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }


def tiny_config(**draft: Any) -> DSparkModelConfig:
    """A resolved config with hidden 32, vocab 96, 2 draft layers, block 4, 3 captured layers, rank 8."""
    opts: dict[str, Any] = {
        "block_size": 4, "num_draft_layers": 2, "num_anchors": 6, "num_target_layers_captured": 3,
        "markov_rank": 8, "mask_token_id": VOCAB - 1,
    }
    opts.update(draft)
    return resolve_model_config(target_hf_config(), DraftOptions(**opts))


def make_model(cfg: DSparkModelConfig, seed: int = 0, **kwargs: Any) -> DSparkDraftModel:
    model = DSparkDraftModel(cfg, **kwargs)
    model.reset_parameters(seed)
    return model


@dataclass
class Batch:
    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    hidden: torch.Tensor
    last_hidden: torch.Tensor
    anchors: torch.Tensor
    keep: torch.Tensor
    seeds: list[int]

    def select(self, idx: list[int]) -> Batch:
        """Samples ``idx`` as their own micro-batch (right padding trimmed to their longest sample)."""
        lm = self.loss_mask[idx]
        ids = self.input_ids[idx]
        anchors, keep = sample_anchors(lm, self.anchors.shape[1], seeds=[self.seeds[i] for i in idx])
        return Batch(ids, lm, self.hidden[idx], self.last_hidden[idx], anchors, keep, [self.seeds[i] for i in idx])

    def args(self) -> tuple[torch.Tensor, ...]:
        return (self.input_ids, self.hidden, self.loss_mask, self.anchors, self.keep, self.last_hidden)


def make_batch(cfg: DSparkModelConfig, bsz: int = 4, seq_len: int = 24, seed: int = 0) -> Batch:
    """Random tokens and hidden states; each sample has a loss span of its own length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size - 1, (bsz, seq_len), generator=g)
    lm = torch.zeros(bsz, seq_len, dtype=torch.long)
    for b in range(bsz):
        start = int(torch.randint(1, seq_len // 3, (1,), generator=g))
        end = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=g))
        lm[b, start:end] = 1
    hid = torch.randn(bsz, seq_len, cfg.num_captured_layers * cfg.hidden_size, generator=g)
    last = torch.randn(bsz, seq_len, cfg.hidden_size, generator=g) * 3
    seeds = [1000 + seed * 17 + b for b in range(bsz)]
    anchors, keep = sample_anchors(lm, cfg.num_anchors, seeds=seeds)
    return Batch(ids, lm, hid, last, anchors, keep, seeds)
