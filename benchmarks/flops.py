"""FLOP count of one DSpark training sample (matmul FLOPs only) and the MFU that follows from it.

Convention: a matmul ``[m, k] x [k, n]`` costs ``2 m k n``. Per sample, with ``Q = A * K`` draft
positions, ``T`` context positions and the draft's sizes:

    trainable (x3: forward, grad of input, grad of weight)
        fc            2 * T * (L*H) * H
        per layer     q_proj 2*Q*H*(nh*hd)   k_proj, v_proj 2*(T+Q)*H*(nkv*hd) each   o_proj 2*Q*(nh*hd)*H
                      MLP    3 * 2*Q*H*I
        Markov W2     2 * Q * r * V            (W1 is an embedding lookup, no matmul)
        confidence    2 * Q * (H + r)          (negligible)
    attention (x3)    per layer 2 * (2 * Q * C * nh * hd)   (scores and values), C = average visible
                      context per query = mean anchor position + K = (T - 1) / 2 + K for anchors uniform in
                      [0, T)
    frozen LM head    draft logits 2 * Q * H * V   x2 (forward, grad of h; the weight gets no grad)
                      target logits 2 * Q * H * V  x1 (forward only)

At the published Qwen3-8B shape (H 4096, I 12288, 32/8 heads of 128, V 151936, 5 layers, A 512, K 7,
T 2048, L 5, r 256) this is 37.4 TFLOP per sample (``python benchmarks/flops.py`` prints the parts).
The count is fixed by the shapes: an implementation that skips work (e.g. target logits once per
distinct position) gets a higher "MFU by the count"; ``executed_flops`` reports what actually ran.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

# bf16 dense peak (no sparsity) per card, TFLOP/s; the H200 is the same GH100 chip as the H100 SXM.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}


@dataclass(frozen=True)
class Shape:
    hidden: int = 4096
    intermediate: int = 12288
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 151936
    layers: int = 5
    anchors: int = 512
    block: int = 7
    seq: int = 2048
    captured: int = 5
    markov_rank: int = 256
    confidence: bool = True


def flop_parts(s: Shape = Shape()) -> dict[str, float]:
    """FLOPs of one sample per part, with the training multipliers applied (see the module docstring)."""
    q = s.anchors * s.block
    t = s.seq
    h = s.hidden
    attn_out = s.heads * s.head_dim
    kv_out = s.kv_heads * s.head_dim
    fc = 2 * t * (s.captured * h) * h
    per_layer = (2 * q * h * attn_out + 2 * 2 * (t + q) * h * kv_out + 2 * q * attn_out * h
                 + 3 * 2 * q * h * s.intermediate)
    markov = 2 * q * s.markov_rank * s.vocab
    conf = 2 * q * (h + s.markov_rank) if s.confidence else 0
    visible = (t - 1) / 2 + s.block
    attention = s.layers * 2 * (2 * q * visible * s.heads * s.head_dim)
    lm_head = 2 * q * h * s.vocab
    return {
        "fc": 3.0 * fc,
        "decoder_linear": 3.0 * s.layers * per_layer,
        "attention": 3.0 * attention,
        "markov_w2": 3.0 * markov,
        "confidence": 3.0 * conf,
        "lm_head_draft": 2.0 * lm_head,
        "lm_head_target": 1.0 * lm_head,
    }


def flops_per_sample(s: Shape = Shape()) -> float:
    return sum(flop_parts(s).values())


def executed_flops(s: Shape, target_rows: float, draft_rows: float | None = None,
                   draft_lm_passes: float = 2.0, target_lm_passes: float = 1.0) -> float:
    """FLOPs actually run when the LM head projected ``draft_rows`` draft rows ``draft_lm_passes`` times
    and ``target_rows`` target rows ``target_lm_passes`` times (the rest as counted)."""
    parts = flop_parts(s)
    per_row = 2 * s.hidden * s.vocab
    q = s.anchors * s.block
    rows = q if draft_rows is None else draft_rows
    return (sum(v for k, v in parts.items() if not k.startswith("lm_head"))
            + draft_lm_passes * rows * per_row + target_lm_passes * target_rows * per_row)


def peak_tflops(device_name: str) -> float:
    """The bf16 dense peak for a CUDA device name (H100/H200: 989.4 TFLOP/s)."""
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return float("nan")


def mfu(samples_per_second: float, device_name: str, s: Shape = Shape()) -> float:
    """Model FLOP utilisation by the count: counted FLOPs per second over the card's bf16 dense peak."""
    return samples_per_second * flops_per_sample(s) / (peak_tflops(device_name) * 1e12)


def main() -> None:
    parser = argparse.ArgumentParser(description="FLOP count of one DSpark training sample")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    s = Shape()
    parts = flop_parts(s)
    total = sum(parts.values())
    if args.json:
        print(json.dumps({"shape": asdict(s), "parts": parts, "total": total}, indent=2))
        return
    for k, v in parts.items():
        print(f"{k:16s} {v / 1e12:8.3f} TFLOP")
    print(f"{'total':16s} {total / 1e12:8.3f} TFLOP per sample")
    for sps in (8.0, 12.0):
        print(f"{sps:5.1f} samples/s on an H100 = {mfu(sps, 'H100'):.1%} MFU")


if __name__ == "__main__":
    main()
