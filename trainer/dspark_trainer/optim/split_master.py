"""AdamW for bf16 parameters with an exact fp32 master copy in half the memory.

An fp32 value is 32 bits; a bf16 value is its upper 16 bits (rounded). Instead of a second, fp32 copy
of every parameter (4 bytes more per value), the optimizer keeps only the 16-bit *residual*
``bits(master) - bits(bf16) << 16`` next to the bf16 parameter the model computes with (2 bytes more
per value). ``merge(bf16, residual)`` rebuilds the fp32 master bit for bit, so training follows the
same fp32 master-weight AdamW trajectory as ``torch.optim.AdamW`` on fp32 masters.

The bf16 value is the master rounded to nearest with ties away from zero (``torch``'s own fp32 -> bf16
cast rounds ties to even; the two differ only for masters exactly half-way between two bf16 values).
With that rounding the residual always fits in an int16: ``[-2**15, 2**15 - 1]``.

The step runs bucket by bucket (``bucket_bytes`` of fp32 master per bucket): per bucket one fp32
master and one fp32 gradient exist at a time. With ``offload_moments`` the two AdamW moments live in
pinned host memory and are streamed to the GPU per bucket (copies on a side stream, one bucket
ahead), which removes 8 bytes per value from the GPU at the cost of moving them across PCIe once per
optimizer step (amortised over the micro-batches of a step).

It is a ``torch.optim.Optimizer``: the state of a parameter (``residual``, ``exp_avg``, ``exp_avg_sq``,
``step``) lives in ``optimizer.state[p]``, so LR schedulers and torch.distributed.checkpoint work. FSDP2
parameters (DTensors) are stepped shard by shard; their state tensors are DTensors with the same
placements (moment offloading is for plain tensors only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch.distributed.tensor import DTensor
from torch.optim.adam import adam

_HALF = 0x8000


def split_fp32(master: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> None:
    """Write ``master`` (fp32, consumed: its storage is used as scratch) into ``hi`` (bf16, rounded to
    nearest, ties away from zero) and ``lo`` (int16 residual), in place."""
    if master.dtype != torch.float32 or hi.dtype != torch.bfloat16 or lo.dtype != torch.int16:
        raise TypeError(f"split_fp32 wants fp32 -> (bf16, int16), got {master.dtype} -> ({hi.dtype}, {lo.dtype})")
    bits = master.view(torch.int32)
    upper = torch.add(bits, _HALF).bitwise_right_shift_(16)  # sign-magnitude rounding works on the bit pattern
    hi.view(torch.int16).copy_(upper)
    bits.sub_(upper.bitwise_left_shift_(16))
    lo.copy_(bits)


def merge_fp32(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The fp32 master ``bits(hi) << 16 + lo`` (a new tensor)."""
    bits = hi.view(torch.int16).to(torch.int32).bitwise_left_shift_(16)
    bits.add_(lo)
    return bits.view(torch.float32)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as is."""
    return t._local_tensor if isinstance(t, DTensor) else t


def buckets_by_size(sizes: Sequence[int], bucket_bytes: int, bytes_per_value: int = 4) -> list[list[int]]:
    """Consecutive index groups whose ``sizes * bytes_per_value`` stay under ``bucket_bytes`` (a larger
    single tensor gets a bucket of its own)."""
    out: list[list[int]] = []
    used = 0
    for i, n in enumerate(sizes):
        if not out or (used and used + n * bytes_per_value > bucket_bytes):
            out.append([])
            used = 0
        out[-1].append(i)
        used += n * bytes_per_value
    return out


class SplitMasterAdamW(torch.optim.Optimizer):
    """Decoupled-weight-decay Adam over bf16 parameters with split fp32 masters (see the module doc).

    Gradients may be bf16 or fp32 (``p.grad``); they are read in fp32 per bucket. A new parameter's
    master is its bf16 value (residual 0).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bucket_bytes: int = 256 << 20,
        offload_moments: bool = False,
    ) -> None:
        plist = list(params)
        if not plist:
            raise ValueError("SplitMasterAdamW got no parameters")
        bad = [p.dtype for p in plist if p.dtype != torch.bfloat16]
        if bad:
            raise TypeError(f"SplitMasterAdamW keeps bf16 parameters only; got {bad[0]} (cast the model to bf16)")
        if offload_moments and any(isinstance(p, DTensor) for p in plist):
            raise ValueError("SplitMasterAdamW: offload_moments is for plain (not FSDP-sharded) parameters")
        super().__init__(plist, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.offload = offload_moments and local(plist[0]).is_cuda
        self.bucket_bytes = bucket_bytes

    # ---- state -------------------------------------------------------------------------------------
    def _state_of(self, p: torch.Tensor) -> dict[str, Any]:
        st = self.state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=local(p).device)
            st["residual"] = torch.zeros_like(p, dtype=torch.int16)
            for key in ("exp_avg", "exp_avg_sq"):
                if self.offload:
                    st[key] = torch.zeros(p.shape, dtype=torch.float32, device="cpu").pin_memory()
                else:
                    st[key] = torch.zeros_like(p, dtype=torch.float32)
        return st

    def master(self, p: torch.Tensor) -> torch.Tensor:
        """The exact fp32 master of ``p`` (this rank's shard for a DTensor; a new tensor)."""
        return merge_fp32(local(p).detach(), local(self._state_of(p)["residual"]))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Like ``Optimizer.load_state_dict``, but state tensors keep their own dtypes (the base class
        casts floating-point state to the parameter's dtype: fp32 moments would become bf16)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(saved_groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}")
        by_id: dict[Any, torch.Tensor] = {}
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"optimizer state has {len(saved['params'])} parameters in a group, this "
                                 f"optimizer {len(group['params'])}")
            by_id.update(zip(saved["params"], group["params"], strict=True))
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state.clear()
        for pid, saved_state in state_dict["state"].items():
            p = by_id[pid]
            self.state[p] = {k: self._placed(p, k, v) for k, v in saved_state.items()}

    def _placed(self, p: torch.Tensor, key: str, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if key in ("exp_avg", "exp_avg_sq") and self.offload:
            return value.to("cpu").pin_memory()
        if isinstance(value, DTensor) or key == "step":
            return value.to(local(p).device)
        return value.to(p.device)

    # ---- step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("SplitMasterAdamW does not take a closure")
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            sizes = [local(p).numel() for p in live]
            buckets = [[live[i] for i in b] for b in buckets_by_size(sizes, self.bucket_bytes)]
            if self.offload:
                self._step_offloaded(buckets, group)
                continue
            for params in buckets:
                states = [self._state_of(p) for p in params]
                m = [local(st["exp_avg"]) for st in states]
                v = [local(st["exp_avg_sq"]) for st in states]
                self._step_bucket(params, states, m, v, group)

    def _step_offloaded(self, buckets: list[list[torch.Tensor]], group: dict[str, Any]) -> None:
        """Moments in pinned host memory: each bucket's are copied in on a side stream while the bucket
        before it steps, and copied back once its step is done."""
        if not buckets:
            return
        device = local(buckets[0][0]).device
        copy = torch.cuda.Stream(device=device)
        compute = torch.cuda.current_stream(device)

        def fetch(params: list[torch.Tensor]) -> tuple[list[dict[str, Any]], list[torch.Tensor], list[torch.Tensor],
                                                        torch.cuda.Event]:
            states = [self._state_of(p) for p in params]
            with torch.cuda.stream(copy):
                m = [st["exp_avg"].to(device, non_blocking=True) for st in states]
                v = [st["exp_avg_sq"].to(device, non_blocking=True) for st in states]
                ready = torch.cuda.Event()
                ready.record(copy)
            return states, m, v, ready

        nxt = fetch(buckets[0])
        for k, params in enumerate(buckets):
            states, m, v, ready = nxt
            compute.wait_event(ready)
            for t in (*m, *v):
                t.record_stream(compute)
            if k + 1 < len(buckets):
                nxt = fetch(buckets[k + 1])
            self._step_bucket(params, states, m, v, group)
            done = torch.cuda.Event()
            done.record(compute)
            with torch.cuda.stream(copy):
                copy.wait_event(done)
                for st, mi, vi in zip(states, m, v, strict=True):
                    st["exp_avg"].copy_(mi, non_blocking=True)
                    st["exp_avg_sq"].copy_(vi, non_blocking=True)
        compute.wait_stream(copy)

    def _step_bucket(self, params: list[torch.Tensor], states: list[dict[str, Any]], m: list[torch.Tensor],
                     v: list[torch.Tensor], group: dict[str, Any]) -> None:
        masters = [merge_fp32(local(p).detach(), local(st["residual"])) for p, st in zip(params, states, strict=True)]
        grads = [local(cast(torch.Tensor, p.grad)).float() for p in params]
        fused = masters[0].is_cuda
        betas = cast(tuple[float, float], group["betas"])
        adam(
            masters, grads, m, v, [], [st["step"] for st in states],
            foreach=None if fused else True, fused=True if fused else None,
            decoupled_weight_decay=True, amsgrad=False, maximize=False,
            beta1=betas[0], beta2=betas[1], lr=cast(float, group["lr"]),
            weight_decay=cast(float, group["weight_decay"]), eps=cast(float, group["eps"]),
        )
        del grads
        for p, st, master in zip(params, states, masters, strict=True):
            split_fp32(master, local(p).detach(), local(st["residual"]))
