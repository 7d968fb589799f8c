"""Distributed checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under ``checkpoint.dir`` (a directory every rank sees: a shared volume with several nodes):
``step-00000100/`` holds the DCP shards of the trainable model weights and the optimizer (frozen
weights such as the copied embedding and LM head are rebuilt from the target, not saved), plus
``trainer_state.pt`` (step, scheduler, every rank's data cursor and RNG states, counters) and the
``COMPLETE`` marker. A checkpoint is written into ``.tmp-step-N`` and renamed once every rank has
finished and the marker is in, so a crash mid-save never leaves a directory that looks complete;
resume takes the newest ``step-N`` with the marker. Older complete ones beyond ``keep_last`` are removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from dspark_trainer.runtime.dist import barrier

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class ModelOptimizerState(Stateful):
    """DCP view of the trainable model weights and the optimizer (FSDP2-sharded)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.options = StateDictOptions(ignore_frozen_params=True)

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=self.options)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state_dict["model"],
            optim_state_dict=state_dict["optim"],
            options=StateDictOptions(ignore_frozen_params=True, strict=False),
        )


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointManager:
    """Save, find and load complete checkpoints; prune to the last ``keep_last``."""

    def __init__(self, root: str | Path, keep_last: int, rank: int) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / COMPLETE_MARKER).is_file() and (entry / TRAINER_STATE).is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        ckpts = self.complete_checkpoints()
        return ckpts[-1] if ckpts else None

    def save(self, step: int, app_state: dict[str, Stateful], trainer_state: dict[str, Any]) -> Path:
        """Collective: every rank calls it. Returns the final directory."""
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        barrier()
        dcp.save(app_state, checkpoint_id=str(tmp))
        if self.rank == 0:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        barrier()
        if self.rank == 0:
            (tmp / COMPLETE_MARKER).write_text(f"{step}\n")
            if final.exists():  # a re-run of the same step after a resume: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        barrier()
        return final

    def load(self, path: Path, app_state: dict[str, Stateful]) -> dict[str, Any]:
        """Collective: load the shards into ``app_state`` and return the trainer state."""
        dcp.load(app_state, checkpoint_id=str(path))
        state: dict[str, Any] = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
        return state

    def _prune(self) -> None:
        ckpts = self.complete_checkpoints()
        for _, path in ckpts[: max(0, len(ckpts) - self.keep_last)]:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed old checkpoint %s", path)
        for entry in self.root.iterdir():  # leftovers of crashed saves of older steps
            if entry.name.startswith(".tmp-step-"):
                shutil.rmtree(entry, ignore_errors=True)
