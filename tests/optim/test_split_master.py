"""The split fp32 master (bf16 value + int16 residual) is exact, and its AdamW follows fp32 AdamW."""

from __future__ import annotations

import pytest
import torch
from dspark_trainer.optim.split_master import SplitMasterAdamW, buckets_by_size, merge_fp32, split_fp32


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def special_values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(100_000, generator=g) * torch.logspace(-30, 30, 100_000)
    ties = torch.tensor([0x3F808000, 0x3F818000, 0xBF808000 - 2**32, 0xBF818000 - 2**32, 0x00008000],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    edge = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 3.0e38, -3.0e38, 1.0, -1.0, 0.1, -0.1])
    return torch.cat([normal, ties, edge])


def test_split_then_merge_is_bit_exact_and_hi_is_the_nearest_bf16() -> None:
    x = special_values()
    hi = torch.empty(x.shape, dtype=torch.bfloat16)
    lo = torch.empty(x.shape, dtype=torch.int16)
    split_fp32(x.clone(), hi, lo)
    assert torch.equal(bits(merge_fp32(hi, lo)), bits(x))
    # hi is a nearest bf16: it equals torch's round-to-nearest-even except at exact ties
    rne = x.to(torch.bfloat16)
    low16 = bits(x) & 0xFFFF
    differs = bits(hi.float()) != bits(rne.float())
    assert torch.all(low16[differs] == 0x8000), "hi differs from the nearest bf16 away from a tie"
    assert differs.any(), "the tie inputs should round away from zero"
    assert torch.all((hi.float() - x).abs() <= (rne.float() - x).abs())


def test_split_rejects_wrong_dtypes() -> None:
    with pytest.raises(TypeError, match="fp32 -> \\(bf16, int16\\)"):
        split_fp32(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16),
                   torch.zeros(3, dtype=torch.int16))


def test_buckets_keep_order_and_size() -> None:
    assert buckets_by_size([10, 10, 10, 100, 5], bucket_bytes=80) == [[0, 1], [2], [3], [4]]
    assert buckets_by_size([1], bucket_bytes=1) == [[0]]


@pytest.mark.parametrize("bucket_bytes", [64, 1 << 20])
def test_adamw_follows_fp32_master_adamw_bit_for_bit(bucket_bytes: int) -> None:
    g = torch.Generator().manual_seed(1)
    shapes = [(7, 5), (13,), (3, 4, 2)]
    params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).to(torch.bfloat16)) for s in shapes]
    masters = [p.detach().float().clone().requires_grad_(True) for p in params]
    ref = torch.optim.AdamW(masters, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=True)
    opt = SplitMasterAdamW(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, bucket_bytes=bucket_bytes)
    for step in range(6):
        lr = 1e-3 * (0.5 if step >= 3 else 1.0)
        ref.param_groups[0]["lr"] = lr
        opt.param_groups[0]["lr"] = lr
        for p, m in zip(params, masters, strict=True):
            grad = (torch.randn(p.shape, generator=g) * 0.01).to(torch.bfloat16)
            p.grad = grad
            m.grad = grad.float()
        ref.step()
        opt.step()
        opt.zero_grad()
        for p, m in zip(params, masters, strict=True):
            assert torch.equal(bits(opt.master(p)), bits(m.detach()))
            assert torch.all((p.data.float() - m.detach()).abs() <= (m.detach().to(torch.bfloat16).float()
                                                                     - m.detach()).abs())


def test_parameters_without_gradient_are_left_alone() -> None:
    a = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = SplitMasterAdamW([a, b], lr=0.1)
    a.grad = torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    assert torch.all(a.data < 1) and torch.equal(b.data, torch.ones(4, dtype=torch.bfloat16))
    assert float(opt.state[a]["step"]) == 1.0 and b not in opt.state


def test_fp32_parameters_are_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match="cast the model to bf16"):
        SplitMasterAdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("offload", [False, True])
def test_cuda_fused_and_offloaded_moments_match_the_cpu_step(offload: bool) -> None:
    g = torch.Generator().manual_seed(2)
    cpu = [torch.nn.Parameter((torch.randn(64, 33, generator=g) * 0.05).to(torch.bfloat16)) for _ in range(5)]
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    a = SplitMasterAdamW(cpu, lr=1e-3, weight_decay=0.01)
    b = SplitMasterAdamW(gpu, lr=1e-3, weight_decay=0.01, bucket_bytes=2 * 64 * 33 * 4, offload_moments=offload)
    for _ in range(4):
        for p, q in zip(cpu, gpu, strict=True):
            grad = (torch.randn(p.shape, generator=g) * 0.01).to(torch.bfloat16)
            p.grad, q.grad = grad, grad.cuda()
        a.step()
        b.step()
    for p, q in zip(cpu, gpu, strict=True):
        diff = (a.master(p) - b.master(q).cpu()).abs().max()
        assert float(diff) < 1e-6  # fused CUDA kernel vs CPU for-each: same math, last-bit rounding may differ


def test_state_dict_round_trip_restores_the_exact_masters() -> None:
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter((torch.randn(9, 4, generator=g) * 0.05).to(torch.bfloat16)) for _ in range(2)]
    opt = SplitMasterAdamW(params, lr=1e-2)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 0.01).to(torch.bfloat16)
    opt.step()
    saved = opt.state_dict()
    clones = [torch.nn.Parameter(p.detach().clone()) for p in params]
    other = SplitMasterAdamW(clones, lr=1e-2)
    other.load_state_dict(saved)
    for p, q in zip(params, clones, strict=True):
        assert torch.equal(bits(opt.master(p)), bits(other.master(q)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(other, lambda step: 0.5)
    assert other.param_groups[0]["lr"] == pytest.approx(5e-3) and scheduler.get_last_lr() == [pytest.approx(5e-3)]
