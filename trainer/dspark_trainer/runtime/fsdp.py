"""FSDP2 wrapping and the optimizer.

``fully_shard`` is applied to every decoder layer and then to the root (which keeps the context
projection, norms, Markov and confidence heads). Trainable parameters stay fp32 (the optimizer's
master copy); ``MixedPrecisionPolicy(param_dtype, reduce_dtype=fp32)`` casts them for compute and
reduces gradients in fp32. With ``optimizer.masterWeights: split`` they are stored in bf16 instead and
``SplitMasterAdamW`` holds the rest of each fp32 master.

Frozen parameters of the root (the embedding and the LM head, ~1.2 B values at the Qwen3-8B shape)
are kept OUT of FSDP (``ignored_params``): every rank holds them whole, in the compute dtype (bf16
on CUDA), with ``requires_grad`` False. That removes their all-gather (and fp32 -> bf16 cast) from
every root forward and their fp32 copy (benchmarks/RESULTS.md: 85.7 % -> 90.2 % weak-scaling
efficiency 1 -> 4 GPUs). In the state dict they are plain (replicated) tensors, which DCP saves once
and loads on every rank. On CUDA the optimizer is the fused AdamW (one kernel over all parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from dspark_trainer.config.training import OptimizerConfig
from dspark_trainer.optim.split_master import SplitMasterAdamW
from dspark_trainer.runtime.lr_schedule import lr_factor, warmup_steps


def param_dtype_for(precision: Literal["auto", "bf16", "fp32"], device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA, fp32 on CPU."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def shard_model(
    model: torch.nn.Module, layers: Sequence[torch.nn.Module], device: torch.device, world_size: int,
    param_dtype: torch.dtype, *, split_master: bool = False,
) -> DeviceMesh:
    """Apply FSDP2 in place; returns the 1-D data-parallel mesh. The root's frozen parameters are
    cast to ``param_dtype`` and left out of FSDP (replicated, see the module docstring). With
    ``split_master`` the trainable parameters are stored in ``param_dtype`` (bf16) too: the optimizer
    (``SplitMasterAdamW``) keeps the rest of their fp32 masters."""
    if split_master and param_dtype != torch.bfloat16:
        raise ValueError(f"split master weights need bf16 parameters, not {param_dtype}")
    mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp",))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    frozen = frozen_root_parameters(model, layers)
    for p in frozen:
        p.data = p.data.to(param_dtype)
    if split_master:
        for p in trainable_parameters(model):
            p.data = p.data.to(param_dtype)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=set(frozen) or None)
    return mesh


def frozen_root_parameters(model: torch.nn.Module, layers: Sequence[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Parameters with ``requires_grad`` False outside the decoder layers (the embedding, the LM head)."""
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    return [p for p in model.parameters() if not p.requires_grad and id(p) not in in_layers]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA), or SplitMasterAdamW for ``optimizer.masterWeights: split``."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the draft has no trainable parameters")
    if cfg.master_weights == "split":
        return SplitMasterAdamW(
            params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
    fused = all(p.device.type == "cuda" for p in params)  # fused AdamW: CUDA only (CPU keeps the for-each path)
    return torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warm = warmup_steps(total_steps, cfg.warmup_ratio)
    peak, low = cfg.learning_rate, cfg.min_learning_rate
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warm, peak, low))


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Global gradient norm before clipping (over all ranks); clipping is skipped when max_norm is 0."""
    params = [p for p in trainable_parameters(model) if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm.item())
