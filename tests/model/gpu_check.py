"""GPU checks of the DSpark draft (run by hand on a CUDA machine; ``test_model_gpu.py`` runs the quick part):

    PYTHONPATH=trainer:tests/model python tests/model/gpu_check.py [--perf]

1. FlexAttention (compiled, forward + backward) equals the dense SDPA path: loss and every gradient.
2. bf16 parameters: the chunked vocabulary path equals the unchunked one.
3. ``--perf``: one Qwen3-8B-sized draft step (5 layers, T=2048, 512 anchors, K=7, bf16), flex vs dense:
   time per forward+backward and peak memory (a smoke reading, not the benchmark).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model.anchors import sample_anchors
from dspark_trainer.model.config import DSparkModelConfig, resolve_model_config
from dspark_trainer.model.draft import DSparkDraftModel


def _hf(hidden: int, inter: int, heads: int, kv: int, head_dim: int, vocab: int, layers: int = 36) -> dict[str, Any]:
    return {
        "model_type": "qwen3", "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": head_dim, "num_hidden_layers": layers, "vocab_size": vocab,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "hidden_act": "silu", "max_position_embeddings": 40960,
    }


def _batch(cfg: DSparkModelConfig, bsz: int, seq_len: int, dtype: torch.dtype, seed: int = 0) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size - 1, (bsz, seq_len), generator=g)
    lm = torch.zeros(bsz, seq_len, dtype=torch.long)
    for b in range(bsz):
        lm[b, seq_len // 5 + b :] = 1
    hid = torch.randn(bsz, seq_len, cfg.num_captured_layers * cfg.hidden_size, generator=g)
    last = torch.randn(bsz, seq_len, cfg.hidden_size, generator=g) * 2
    anchors, keep = sample_anchors(lm, cfg.num_anchors, seeds=list(range(bsz)), pad_to=cfg.num_anchors)
    dev = torch.device("cuda")
    return (ids.to(dev), hid.to(dev, dtype), lm.to(dev), anchors.to(dev), keep.to(dev), last.to(dev, dtype))


def _grads(model: DSparkDraftModel, batch: tuple[Any, ...]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(*batch)
    assert out.loss is not None
    out.loss.backward()
    return out.loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).norm() / (b[n].norm() + 1e-12)) for n in b)


def check_flex_equals_dense() -> dict[str, float]:
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = resolve_model_config(_hf(256, 512, 8, 2, 64, 4096), DraftOptions(num_anchors=40, markov_rank=32,
                                                                          mask_token_id=4000))
    res: dict[str, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        batch = _batch(cfg, 2, 300, dtype)
        out = {}
        for backend in ("dense", "flex"):
            model = DSparkDraftModel(cfg, attention_backend=backend, loss_chunk_size=128)
            model.reset_parameters(0)
            model.to("cuda", dtype)
            out[backend] = _grads(model, batch)
        name = "fp32" if dtype == torch.float32 else "bf16"
        res[f"{name}_loss_rel"] = abs(out["flex"][0] - out["dense"][0]) / abs(out["dense"][0])
        res[f"{name}_grad_rel"] = _max_rel(out["flex"][1], out["dense"][1])
    return res


def check_chunked_bf16() -> dict[str, float]:
    cfg = resolve_model_config(_hf(256, 512, 8, 2, 64, 8192), DraftOptions(num_anchors=64, markov_rank=32,
                                                                          mask_token_id=8000))
    batch = _batch(cfg, 2, 400, torch.bfloat16, seed=1)
    out = {}
    for chunk in (None, 100):
        model = DSparkDraftModel(cfg, attention_backend="flex", loss_chunk_size=chunk)
        model.reset_parameters(0)
        model.to("cuda", torch.bfloat16)
        out[chunk] = _grads(model, batch)
    return {"loss_rel": abs(out[100][0] - out[None][0]) / abs(out[None][0]), "grad_rel": _max_rel(out[100][1],
                                                                                                  out[None][1])}


def check_varying_shapes() -> dict[str, float]:
    """Compiled flex over 12 micro-batches of different T and A (as the trainer produces): equal to dense,
    and the late calls run at compiled speed (no fall-back to the unfused path after recompilations)."""
    import torch._dynamo

    cfg = resolve_model_config(_hf(256, 512, 8, 2, 64, 4096), DraftOptions(num_anchors=48, markov_rank=32,
                                                                          mask_token_id=4000))
    flex = DSparkDraftModel(cfg, attention_backend="flex", loss_chunk_size=256)
    flex.reset_parameters(0)
    flex.to("cuda")
    dense = DSparkDraftModel(cfg, attention_backend="dense", loss_chunk_size=256)
    dense.load_state_dict(flex.state_dict())
    dense.to("cuda")
    worst = 0.0
    times: list[float] = []
    for i, seq_len in enumerate([300, 517, 402, 640, 333, 700, 812, 290, 451, 777, 605, 388]):
        batch = list(_batch(cfg, 2, seq_len, torch.float32, seed=i))
        # anchors padded to the batch maximum (the default), so A varies too
        batch[3], batch[4] = sample_anchors(batch[2], 48 - (i % 5), seeds=[i, i + 1])
        torch.cuda.synchronize()
        t = time.perf_counter()
        lf, gf = _grads(flex, tuple(batch))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        ld, gd = _grads(dense, tuple(batch))
        worst = max(worst, abs(lf - ld) / abs(ld), _max_rel(gf, gd))
    return {"worst_rel": worst, "first_call_s": times[0], "last4_mean_s": sum(times[-4:]) / 4,
            "recompiles": float(torch._dynamo.utils.counters["stats"]["unique_graphs"])}


def perf() -> dict[str, float]:
    cfg = resolve_model_config(_hf(4096, 12288, 32, 8, 128, 151936), DraftOptions(mask_token_id=151669))
    res: dict[str, float] = {}
    batch = _batch(cfg, 1, 2048, torch.bfloat16)
    with torch.device("cuda"):
        model = DSparkDraftModel(cfg, loss_chunk_size=2048)
    model.to(torch.bfloat16)
    for backend in ("flex", "dense"):
        model.attention_backend = backend  # type: ignore[assignment]
        for _ in range(2):
            _grads(model, batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        n = 5
        for _ in range(n):
            _grads(model, batch)
        torch.cuda.synchronize()
        res[f"{backend}_ms_per_step"] = (time.perf_counter() - t) / n * 1000
        res[f"{backend}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--perf", action="store_true")
    args = parser.parse_args()
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    print("flex == dense:", check_flex_equals_dense(), flush=True)
    print("chunked == unchunked (bf16):", check_chunked_bf16(), flush=True)
    print("varying shapes (compiled flex vs dense):", check_varying_shapes(), flush=True)
    if args.perf:
        print("perf (Qwen3-8B-sized draft, T=2048, A=512, K=7, bf16):", perf(), flush=True)


if __name__ == "__main__":
    main()
