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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
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


def residual_of(param: torch.Tensor) -> torch.Tensor:
    """The residual of a bf16 parameter taken as its own exact master (zeros)."""
    return torch.zeros(param.shape, dtype=torch.int16, device=param.device)


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


class SplitMasterAdamW:
    """Decoupled-weight-decay Adam over bf16 parameters with split fp32 masters (see the module doc).

    Gradients may be bf16 or fp32 (``p.grad``); they are read in fp32 per bucket. The learning rate can
    be changed between steps through ``param_groups[0]["lr"]``.
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
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("SplitMasterAdamW got no parameters")
        bad = [p.dtype for p in self.params if p.dtype != torch.bfloat16]
        if bad:
            raise TypeError(f"SplitMasterAdamW keeps bf16 parameters only; got {bad[0]} (cast the model to bf16)")
        self.param_groups = [{"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}]
        self.offload = offload_moments and self.params[0].is_cuda
        self.residuals = [residual_of(p) for p in self.params]
        moment_device = torch.device("cpu") if self.offload else None

        def moment(p: torch.Tensor) -> torch.Tensor:
            if moment_device is None:
                return torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            return torch.zeros(p.shape, dtype=torch.float32, device=moment_device).pin_memory()

        self.exp_avg = [moment(p) for p in self.params]
        self.exp_avg_sq = [moment(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        self.buckets = buckets_by_size([p.numel() for p in self.params], bucket_bytes)
        self.fused = self.params[0].is_cuda

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        if not self.offload:
            for bucket in self.buckets:
                m = [self.exp_avg[i] for i in bucket]
                self._step_bucket(bucket, m, [self.exp_avg_sq[i] for i in bucket], group)
            return
        copy = torch.cuda.Stream(device=self.params[0].device)
        compute = torch.cuda.current_stream(self.params[0].device)

        def fetch(bucket: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.cuda.Event]:
            with torch.cuda.stream(copy):
                m = [self.exp_avg[i].to(self.params[i].device, non_blocking=True) for i in bucket]
                v = [self.exp_avg_sq[i].to(self.params[i].device, non_blocking=True) for i in bucket]
                ev = torch.cuda.Event()
                ev.record(copy)
            return m, v, ev

        nxt = fetch(self.buckets[0])
        for k, bucket in enumerate(self.buckets):
            m, v, ready = nxt
            compute.wait_event(ready)
            for t in (*m, *v):
                t.record_stream(compute)
            if k + 1 < len(self.buckets):
                nxt = fetch(self.buckets[k + 1])
            self._step_bucket(bucket, m, v, group)
            done = torch.cuda.Event()
            done.record(compute)
            with torch.cuda.stream(copy):
                copy.wait_event(done)
                for i, mi, vi in zip(bucket, m, v, strict=True):
                    self.exp_avg[i].copy_(mi, non_blocking=True)
                    self.exp_avg_sq[i].copy_(vi, non_blocking=True)
                    mi.record_stream(copy)
                    vi.record_stream(copy)
        compute.wait_stream(copy)

    def _step_bucket(self, bucket: list[int], m: list[torch.Tensor], v: list[torch.Tensor],
                     group: dict[str, object]) -> None:
        live = [j for j, i in enumerate(bucket) if self.params[i].grad is not None]
        if not live:
            return
        idx = [bucket[j] for j in live]
        masters = [merge_fp32(self.params[i], self.residuals[i]) for i in idx]
        grads = [self.params[i].grad.float() for i in idx]  # type: ignore[union-attr]
        betas = cast(tuple[float, float], group["betas"])
        adam(
            masters, grads, [m[j] for j in live], [v[j] for j in live], [], [self.steps[i] for i in idx],
            foreach=None if self.fused else True, fused=True if self.fused else None,
            decoupled_weight_decay=True, amsgrad=False, maximize=False,
            beta1=betas[0], beta2=betas[1], lr=cast(float, group["lr"]),
            weight_decay=cast(float, group["weight_decay"]), eps=cast(float, group["eps"]),
        )
        del grads
        for i, master in zip(idx, masters, strict=True):
            split_fp32(master, self.params[i].data, self.residuals[i])

    def state_bytes_on_device(self) -> int:
        """Bytes of optimizer state on the parameters' device (residuals, steps, moments unless offloaded)."""
        total = sum(r.numel() * r.element_size() for r in self.residuals) + 4 * len(self.steps)
        if not self.offload:
            total += sum(t.numel() * 4 for t in (*self.exp_avg, *self.exp_avg_sq))
        return total
