"""Process-group set-up for torchrun (gloo on CPU, NCCL on GPU) and small collective helpers.

Run without torchrun (no ``RANK`` in the environment), the trainer is a one-rank group on a free port.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from dspark_trainer.util.net import free_port


@dataclass(frozen=True)
class DistContext:
    """Who this process is and where it computes."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(kind: Literal["auto", "cpu", "cuda"], local_rank: int) -> torch.device:
    """``auto`` takes CUDA when a GPU is visible."""
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device: cuda was asked for but no GPU is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def attempt_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's agent store, a store namespace of its own for this restart attempt.

    With a static rendezvous (``--master-addr/--master-port``) torchrun keeps ONE store across
    ``--max-restarts`` restarts, and the process group of a restarted gang would read the previous
    attempt's peer addresses from it (gloo then connects to a dead worker's port). A prefix per
    ``TORCHELASTIC_RESTART_COUNT`` keeps the attempts apart.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"dspark/attempt_{restart}", client)


def init_distributed(device_kind: Literal["auto", "cpu", "cuda"], timeout_seconds: float) -> DistContext:
    """Join (or create) the default process group."""
    if "RANK" not in os.environ:
        os.environ.update(
            {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port())}
        )
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_kind, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_seconds)
        kwargs: dict[str, Any] = {"timeout": timeout}
        if device.type == "cuda":
            kwargs["device_id"] = device
        store = attempt_store(world_size, timeout)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(backend=backend, **kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


def shutdown_distributed(*, together: bool = False) -> None:
    """Leave the process group. With ``together`` (the normal end of a run) every rank first meets at a
    barrier, so no rank tears down its connections while a peer is still using them: gloo aborts a
    process ("terminate called without an active exception") whose peer closed a pair mid-operation.
    Error paths leave without the barrier, which could wait for a dead peer until the timeout."""
    if not dist.is_initialized():
        return
    if together and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (float64 on the collective's device), returned for chaining."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_max(t).item() > 0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
