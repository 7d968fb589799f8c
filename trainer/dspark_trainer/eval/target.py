"""The target at inference: a Hugging Face causal LM with a KV cache, returning float32 logits and the
hidden states of the captured layers (``hidden_states[i + 1]`` is the output of layer ``i``, id -1 the
embedding output: the layers and order the draft was trained on).

Rows of a batch hold different numbers of tokens: every forward appends a segment of the same width to
the cache for all rows, and ``attention_mask [B, cache length]`` marks which cache entries each row may
attend to (left padding of the prompts, rejected drafts). Positions are passed explicitly per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_target(target_dir: str | Path, dtype: str = "bfloat16", device: str | torch.device = "cpu") -> Any:
    """The target causal LM from a local directory, in eval mode, without gradients."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"--target-dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(target_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--target {path}: not a model directory (no config.json)")
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


class TargetRunner:
    """Forward passes of one batch against its own cache."""

    def __init__(self, model: Any, layer_ids: list[int] | None) -> None:
        from transformers import DynamicCache

        self.model = model
        self.layer_ids = layer_ids
        self.cache = DynamicCache()
        self.mask: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, need_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed ``tokens [B, S]`` at ``positions [B, S]``; ``valid [B, S]`` marks real tokens (False: padding).

        Returns float32 ``logits [B, S, V]`` and, with ``need_hidden``, the captured states ``[B, S, L*H]``.
        """
        valid = valid.long()
        self.mask = valid if self.mask is None else torch.cat([self.mask, valid], dim=1)
        out = self.model(
            input_ids=tokens, position_ids=positions, attention_mask=self.mask, past_key_values=self.cache,
            use_cache=True, output_hidden_states=need_hidden and self.layer_ids is not None,
        )
        hidden = None
        if need_hidden and self.layer_ids is not None:
            hidden = torch.cat([out.hidden_states[i + 1] for i in self.layer_ids], dim=-1)
        return out.logits.float(), hidden

    def keep_last(self, keep: torch.Tensor, width: int) -> None:
        """After a forward of ``width`` tokens, row ``b`` keeps only the first ``keep[b]`` of them."""
        assert self.mask is not None
        seg = torch.arange(width, device=keep.device).unsqueeze(0) < keep.unsqueeze(1)
        self.mask[:, -width:] = seg.long()
        drop = width - int(keep.max()) if keep.numel() else width
        if drop > 0:  # cache entries no row keeps
            self.cache.crop(-drop)
            self.mask = self.mask[:, :-drop]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch."""
        self.cache.batch_select_indices(rows)
        if self.mask is not None:
            self.mask = self.mask[rows]
