"""The demo's target: a tiny random Qwen3 (``make_tiny_qwen3_target``), then taught the bundled
conversations for a few hundred causal-LM steps on the CPU.

A random target predicts every token almost uniformly, so a random draft already "agrees" with it
and the acceptance length tau says nothing. After this short lesson the target's next-token
distributions are peaked and consistent with the data, and the draft visibly has to learn them:
the demo's tau starts near 1 and rises. Deterministic for the same arguments; written once
(``dspark_tiny_target.json`` records how it was made) and reused by later runs.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dspark_trainer.assets import DEMO_DATASET

RECIPE_FILE = "dspark_tiny_target.json"


@dataclass(frozen=True)
class TinyTargetRecipe:
    hidden_size: int = 64
    num_layers: int = 8
    vocab_size: int = 512
    seed: int = 0
    lesson_steps: int = 300
    lesson_batch_size: int = 8
    lesson_learning_rate: float = 5e-3
    max_length: int = 160
    threads: int = 1


def is_ready(path: Path, recipe: TinyTargetRecipe) -> bool:
    marker = path / RECIPE_FILE
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("recipe") == asdict(recipe))
    except (OSError, ValueError):
        return False


def _token_batches(target_dir: Path, recipe: TinyTargetRecipe) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target_dir))
    out = []
    for line in DEMO_DATASET.read_text(encoding="utf-8").splitlines():
        if line.strip():
            text = tok.apply_chat_template(json.loads(line)["messages"], tokenize=False,
                                           enable_thinking=False)
            out.append(list(tok(text, add_special_tokens=False)["input_ids"])[: recipe.max_length])
    return out


def teach(target_dir: Path, recipe: TinyTargetRecipe) -> dict[str, Any]:
    """Causal-LM training of the target on the demo conversations; saves it in place."""
    import torch
    from transformers import AutoModelForCausalLM

    sequences = _token_batches(target_dir, recipe)
    model: Any = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lesson_learning_rate, weight_decay=0.0)
    rng = random.Random(recipe.seed)
    pad = int(model.config.pad_token_id or 0)
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)  # more threads than free cores makes this crawl on a busy machine
    try:
        losses = _lesson(model, opt, sequences, recipe, rng, pad)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(str(target_dir))
    return {"first_loss": losses[0], "last_loss": sum(losses[-10:]) / min(10, len(losses)),
            "seconds": time.monotonic() - started}


def _lesson(model: Any, opt: Any, sequences: list[list[int]], recipe: TinyTargetRecipe, rng: random.Random,
            pad: int) -> list[float]:
    import torch

    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        for step in range(recipe.lesson_steps):
            batch = rng.sample(sequences, min(recipe.lesson_batch_size, len(sequences)))
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, seq in enumerate(batch):
                ids[i, : len(seq)] = torch.tensor(seq)
                labels[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            for group in opt.param_groups:  # linear decay
                group["lr"] = recipe.lesson_learning_rate * (1 - step / recipe.lesson_steps)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    return losses


def ensure_demo_target(path: Path, recipe: TinyTargetRecipe | None = None) -> Path:
    """Create (once) the taught tiny target at ``path``."""
    recipe = recipe or TinyTargetRecipe()
    if is_ready(path, recipe):
        return path
    from transformers.utils import logging as hf_logging

    from dspark_trainer.local.tiny_model import make_tiny_qwen3_target

    hf_logging.disable_progress_bar()  # no "Loading weights" / "Writing model shards" bars in the demo

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    make_tiny_qwen3_target(tmp, hidden_size=recipe.hidden_size, num_layers=recipe.num_layers,
                           vocab_size=recipe.vocab_size, seed=recipe.seed)
    lesson = teach(tmp, recipe)
    (tmp / RECIPE_FILE).write_text(json.dumps({"recipe": asdict(recipe), "lesson": lesson}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
