"""Drafts to evaluate: an exported draft directory, optionally with the weights of a training checkpoint.

A training checkpoint (``checkpoint.dir/step-N``, written with ``torch.distributed.checkpoint`` by any number
of ranks) holds the trainable weights under ``train.model.<name>``; the frozen embedding and LM head come
from the exported draft (they are the target's). This gives the draft of any checkpointed step, e.g. for a
curve of real acceptance over training steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dspark_trainer.model.api import load_draft
from dspark_trainer.model.draft import DSparkDraftModel


def load_checkpoint_weights(model: DSparkDraftModel, step_dir: str | Path) -> None:
    """Overwrite ``model``'s trainable weights with those of training checkpoint ``step_dir``."""
    import torch.distributed.checkpoint as dcp

    path = Path(step_dir)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"--checkpoint {path}: not a training checkpoint (no .metadata)")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state = {name: torch.empty(p.shape, dtype=torch.float32) for name, p in params.items()}
    dcp.load({"train": {"model": state}}, checkpoint_id=str(path), no_dist=True)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(dtype=p.dtype, device=p.device))


def load_eval_draft(
    draft_dir: str | Path, *, checkpoint: str | Path | None = None, device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None, target_dir: str | Path | None = None,
) -> DSparkDraftModel:
    """The draft in ``draft_dir`` (weights from ``checkpoint`` when given), in eval mode; the frozen embedding and
    LM head come from ``target_dir`` when the export leaves them out (as the serving engines take them)."""
    model = load_draft(draft_dir, attention_backend="dense", target_dir=target_dir)
    if checkpoint is not None:
        model = model.float()
        load_checkpoint_weights(model, checkpoint)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    return model.eval()
