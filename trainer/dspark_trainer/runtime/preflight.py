"""Start-up checks: everything that can be wrong with a config is found before any process group,
model or server starts, and reported as a ConfigError that names the field."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError
from dspark_trainer.data.records import ConversationRecord, DatasetError, load_dataset
from dspark_trainer.data.sharding import samples_per_rank_per_step, shard_length, total_steps
from dspark_trainer.data.split import split_records
from dspark_trainer.data.tokenize import ChatTokenizer
from dspark_trainer.target_resolution import (
    describe_target,
    load_target_config,
    resolve_layer_ids,
    resolve_target_dir,
    target_num_layers,
)


@dataclass
class RunPlan:
    """What preflight resolved: data splits, the target's directory, tokenizer, layer ids, step counts."""

    train: Sequence[ConversationRecord]
    held_out: Sequence[ConversationRecord]
    chat_tokenizer: ChatTokenizer
    target_dir: str  # every reader of the target (config, tokenizer, weights) reads this one directory
    target_config: Any
    layer_ids: list[int]
    world_size: int
    samples_per_rank: int  # per optimizer step
    accumulation_steps: int
    total_steps: int

    @property
    def epoch_length_steps(self) -> float:
        """Optimizer steps per pass over the training split."""
        per_epoch = shard_length(len(self.train), self.world_size)
        return per_epoch / self.samples_per_rank


def load_chat_tokenizer(config: JobConfig, target_dir: str) -> ChatTokenizer:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(target_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"target.model: cannot load the tokenizer of {describe_target(config.target)}: {exc}"
        ) from None
    try:
        ds = config.dataset
        return ChatTokenizer(
            tokenizer,
            max_length=ds.max_length,
            chat_template=ds.chat_template,
            template_kwargs=ds.chat_template_kwargs,
            default_system_prompt=ds.default_system_prompt,
            empty_think_block=ds.empty_think_block,
            supervise_turn_end_whitespace=ds.supervise_turn_end_whitespace,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_paths(config: JobConfig) -> None:
    for field, value in (("checkpoint.dir", config.checkpoint.dir), ("outputDir", config.output_dir)):
        parent = Path(value)
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{field}: {value} is below a file, not a directory")


def check_master_weights(config: JobConfig, cuda_available: bool) -> None:
    """Split master weights need bf16 parameters."""
    if config.optimizer.master_weights != "split":
        return
    rt = config.runtime
    on_cuda = rt.device == "cuda" or (rt.device == "auto" and cuda_available)
    if rt.precision == "bf16" or (rt.precision == "auto" and on_cuda):
        return
    raise ConfigError(
        f"optimizer.masterWeights: split needs bf16 parameters, but runtime.precision is {rt.precision} "
        f"on {'CUDA' if on_cuda else 'CPU'}; set runtime.precision: bf16 or optimizer.masterWeights: fp32"
    )


def plan_run(config: JobConfig, world_size: int) -> RunPlan:
    """Every start-up check; raises ConfigError naming the field."""
    check_master_weights(config, torch.cuda.is_available())
    if config.capture.mode == "remote" and not config.capture.endpoints:
        raise ConfigError("capture.endpoints: at least one capture server URL is needed when capture.mode is remote")
    try:
        records = load_dataset(config.dataset.path, "dataset.path")
        train: Sequence[ConversationRecord]
        held_out: Sequence[ConversationRecord]
        if config.dataset.eval_path:
            train, held_out = records, load_dataset(config.dataset.eval_path, "dataset.evalPath")
        else:
            train, held_out = split_records(records, config.dataset.eval_fraction)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    sched = config.schedule
    if shard_length(len(train), world_size) < sched.micro_batch_size:
        raise ConfigError(
            f"dataset.path: {len(train)} training samples are too few for {world_size} ranks x "
            f"schedule.microBatchSize {sched.micro_batch_size}"
        )
    try:
        per_rank, accum = samples_per_rank_per_step(sched.global_batch_size, world_size, sched.micro_batch_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    target_dir = resolve_target_dir(config.target)
    target_config = load_target_config(config.target, target_dir)
    layer_ids = resolve_layer_ids(config.draft, target_num_layers(config.target, target_config))
    chat_tokenizer = load_chat_tokenizer(config, target_dir)
    n_effective = shard_length(len(train), world_size) * world_size
    steps = total_steps(n_effective, sched.global_batch_size, sched.num_epochs, sched.max_steps)
    check_paths(config)
    return RunPlan(
        train=train,
        held_out=held_out,
        chat_tokenizer=chat_tokenizer,
        target_dir=target_dir,
        target_config=target_config,
        layer_ids=layer_ids,
        world_size=world_size,
        samples_per_rank=per_rank,
        accumulation_steps=accum,
        total_steps=steps,
    )


def epochs_done(plan: RunPlan, step: int) -> float:
    """Fractional passes over the training split after ``step`` optimizer steps."""
    return step / plan.epoch_length_steps if plan.epoch_length_steps > 0 else math.inf
