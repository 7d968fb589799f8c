"""One-GPU DSpark training-step benchmark at the published Qwen3-8B shape.

    python benchmarks/train_step_bench.py --out results/                   # all variants on cuda:0
    python benchmarks/train_step_bench.py --device cpu --tiny              # the same code paths, tiny

Builds the draft (hidden 4096, 5 layers, 32/8 heads of 128, intermediate 12288, vocab 151936, 512
anchors, block 7, T 2048, 5 captured layers, vanilla Markov rank 256, confidence head) with random
frozen embedding/LM head and synthetic, random (not zero) target hidden states, then times, in ONE
process and on the same weights, each variant:

  eager           benchmarks/eager_reference.py: plain PyTorch, dense mask, repeated K/V, unchunked logits
  baseline        the model as it was before the optimizations: compiled FlexAttention, chunked vocab path that
                  recomputes the logits (draft 3x, target 2x) in backward, eager layers
  fused           + loss gradient computed in the forward pass (draft 2x, target 1x), eager per-row math
  fused_compiled  + compiled per-row vocabulary math, target logits once per distinct position
  full            + compiled decoder layers (the default on CUDA)
  full_h2d        full, the batch copied from pinned host memory on a side stream, one sample ahead
  full_split      full, with SplitMasterAdamW (dspark_trainer.optim): the fp32 master kept as the bf16
                  parameter + an int16 residual (exact, 2 bytes/value instead of 4)
  full_split_c512 full_split with vocabulary chunks of 512 rows instead of 1024 (smaller loss buffers)
  full_offload    full_split with the AdamW moments in pinned host memory, streamed per bucket at the
                  optimizer step (-8 bytes/value on the GPU; the copies are amortised over a step's
                  micro-batches like the step itself)
  full_split_host full_split_c512 with the frozen embedding table in pinned host memory
                  (dspark_trainer.model.host_embedding: ~513 distinct rows gathered and copied per forward;
                  the block ids are staged from the host copy of the batch, as a data path would).
                  Irreversible in the process: it runs after every variant that keeps the table on the GPU.

Per variant: the median step time and its split (forward, loss/logits = vocabulary projection and loss
forward + its backward, backward, optimizer) from CUDA events, samples/s, MFU by the count
(benchmarks/flops.py, 37.4 TFLOP/sample) against the card's bf16 dense peak, the FLOPs actually run,
and peak memory (torch.cuda.max_memory_allocated, optimizer state included; also per phase, to show
where the peak is). Parameters are bf16 with fp32 master weights and fp32 AdamW moments (bucketed
fused AdamW, so no fp32 copy of all gradients; ``full_split``/``full_offload``: see above).
``--check`` compares every variant's loss and gradients with the eager reference first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.loss import vocab as vocab_mod
from dspark_trainer.model.anchors import noise_input_ids, sample_anchors
from dspark_trainer.model.config import DSparkModelConfig, resolve_model_config
from dspark_trainer.model.draft import DSparkDraftModel
from dspark_trainer.model.host_embedding import HostEmbedding, keep_embedding_on_host
from dspark_trainer.optim.split_master import SplitMasterAdamW
from eager_reference import eager_loss, relative_error
from flops import Shape, executed_flops, flops_per_sample, peak_tflops

VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "baseline": {"fused_loss": False, "dedupe_target": False, "compile_layers": False, "compile_loss": False},
    "fused": {"fused_loss": True, "dedupe_target": False, "compile_layers": False, "compile_loss": False},
    "fused_compiled": {"fused_loss": True, "dedupe_target": True, "compile_layers": False, "compile_loss": True},
    "full": {"fused_loss": True, "dedupe_target": True, "compile_layers": True, "compile_loss": True},
    "full_h2d": {"fused_loss": True, "dedupe_target": True, "compile_layers": True, "compile_loss": True},
    "full_split": {"fused_loss": True, "dedupe_target": True, "compile_layers": True, "compile_loss": True},
    "full_split_c512": {"fused_loss": True, "dedupe_target": True, "compile_layers": True, "compile_loss": True,
                        "loss_chunk_fraction": 0.5},
    "full_offload": {"fused_loss": True, "dedupe_target": True, "compile_layers": True, "compile_loss": True},
    "full_split_host": {"fused_loss": True, "dedupe_target": True, "compile_layers": True, "compile_loss": True,
                        "loss_chunk_fraction": 0.5, "host_embedding": True},
}
# the optimizer each variant runs with (variants are run in this order; the optimizer is rebuilt when it changes)
OPTIMIZER_OF = {"full_split": "split", "full_split_c512": "split", "full_offload": "split_offload",
                "full_split_host": "split"}
DEFAULT_LOSS_CHUNK = {"full": 1024, "tiny": 40}
CPU_FLAGS = {"compile_layers": False, "compile_loss": False}


def shape_for(tiny: bool) -> Shape:
    if tiny:
        return Shape(hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=512, layers=2,
                     anchors=16, block=7, seq=128, captured=5, markov_rank=16)
    return Shape()


def model_config(s: Shape) -> DSparkModelConfig:
    hf = {
        "model_type": "qwen3", "hidden_size": s.hidden, "intermediate_size": s.intermediate,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim,
        "num_hidden_layers": 36, "vocab_size": s.vocab, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "hidden_act": "silu", "max_position_embeddings": 40960,
    }
    opts = DraftOptions(num_anchors=s.anchors, block_size=s.block, num_draft_layers=s.layers,
                        num_target_layers_captured=s.captured, markov_rank=s.markov_rank,
                        mask_token_id=s.vocab - 2)
    return resolve_model_config(hf, opts)


def synthetic_batch(cfg: DSparkModelConfig, seq: int, device: torch.device, dtype: torch.dtype, seed: int,
                    bsz: int = 1, pin: bool = False) -> dict[str, torch.Tensor]:
    """Random ids, a loss mask on the last 80% (the prompt is the first 20%), random target states."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size - 2, (bsz, seq), generator=g)
    lm = torch.zeros(bsz, seq, dtype=torch.long)
    lm[:, seq // 5:] = 1
    anchors, keep = sample_anchors(lm, cfg.num_anchors, seeds=[seed + b for b in range(bsz)], pad_to=cfg.num_anchors)
    hid = torch.randn(bsz, seq, cfg.num_captured_layers * cfg.hidden_size, generator=g).to(dtype)
    last = (torch.randn(bsz, seq, cfg.hidden_size, generator=g) * 2).to(dtype)
    batch = {"input_ids": ids, "loss_mask": lm, "anchors": anchors, "keep": keep, "hidden": hid, "last": last}
    if pin:
        return {k: v.pin_memory() for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


class MasterAdamW:
    """fp32 master weights and moments for bf16 parameters; AdamW runs bucket by bucket so that only one
    bucket's gradients exist in fp32 at a time. Step: master.grad = p.grad.float(); AdamW; p = master."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float = 6e-4, bucket_bytes: int = 1 << 30) -> None:
        self.params = params
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in params]
        fused = params[0].is_cuda
        self.opt = torch.optim.AdamW(self.masters, lr=lr, weight_decay=0.0, fused=fused)
        self.buckets: list[list[int]] = [[]]
        size = 0
        for i, p in enumerate(params):
            if size and size + p.numel() * 4 > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(i)
            size += p.numel() * 4

    @torch.no_grad()
    def step(self) -> None:
        for bucket in self.buckets:
            for i in bucket:
                g = self.params[i].grad
                self.masters[i].grad = None if g is None else g.float()
            self.opt.step()
            for i in bucket:
                self.masters[i].grad = None
                self.params[i].copy_(self.masters[i])

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def build_optimizer(kind: str, params: list[torch.nn.Parameter]) -> MasterAdamW | SplitMasterAdamW:
    """master: fp32 master copies (MasterAdamW); split / split_offload: SplitMasterAdamW."""
    if kind == "master":
        return MasterAdamW(params)
    return SplitMasterAdamW(params, lr=6e-4, offload_moments=kind == "split_offload")


class Timer:
    """CUDA events (or host clocks on CPU) at named marks of one step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []
        self.peaks: dict[str, int] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((name, ev))
            # the allocator's peak since the previous mark (host-side bookkeeping, no synchronisation)
            self.peaks[name] = max(self.peaks.get(name, 0), torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        else:
            self.marks.append((name, time.perf_counter()))

    def durations(self) -> dict[str, float]:
        """Seconds between consecutive marks, keyed by the later mark; repeated names add up."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:], strict=False):
            dt = a.elapsed_time(b) / 1000 if self.cuda else b - a
            out[name] = out.get(name, 0.0) + dt
        return out

    def total(self, first: str, last: str) -> float:
        idx = {n: i for i, (n, _) in enumerate(self.marks)}
        a, b = self.marks[idx[first]][1], self.marks[idx[last]][1]
        return a.elapsed_time(b) / 1000 if self.cuda else b - a


@contextlib.contextmanager
def instrument(model: DSparkDraftModel, timer_ref: list[Timer | None]) -> Iterator[None]:
    """Marks around the model's loss call and the chunked path's backward (the baseline's heavy part)."""
    orig_loss = model._loss
    orig_bwd = vocab_mod._ChunkedVocabTerms.backward

    def loss(*args: Any, **kwargs: Any) -> Any:
        t = timer_ref[0]
        if t is not None:
            t.mark("forward")
        res = orig_loss(*args, **kwargs)
        if t is not None:
            t.mark("loss_fwd")
        return res

    def backward(ctx: Any, *grads: Any) -> Any:
        t = timer_ref[0]
        if t is not None:
            t.mark("backward")
        res = orig_bwd(ctx, *grads)
        if t is not None:
            t.mark("loss_bwd")
        return res

    model._loss = loss  # type: ignore[method-assign]
    vocab_mod._ChunkedVocabTerms.backward = staticmethod(backward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model._loss
        vocab_mod._ChunkedVocabTerms.backward = staticmethod(orig_bwd)  # type: ignore[method-assign]


def run_step(model: DSparkDraftModel, variant: str, b: dict[str, torch.Tensor], timer: Timer | None,
             denominator: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward + backward of one micro-batch (the loss scaled by the global denominator)."""
    if variant == "eager":
        mark = None if timer is None else (lambda _name: timer.mark("forward"))
        loss = eager_loss(model, b["input_ids"], b["hidden"], b["loss_mask"], b["anchors"], b["keep"], b["last"],
                          denominator=denominator, mark=mark)
        if timer:
            timer.mark("loss_fwd")
        loss.backward()
        if timer:
            timer.mark("backward")
        return loss.detach(), {}
    out = model(b["input_ids"], b["hidden"], b["loss_mask"], b["anchors"], b["keep"], b["last"],
                denominator=denominator)
    assert out.loss is not None
    out.loss.backward()
    if timer:
        timer.mark("backward")
    return out.loss.detach(), dict(model.last_loss_info)


def configure(model: DSparkDraftModel, variant: str, device: torch.device) -> None:
    flags = dict(VARIANTS[variant])
    if device.type != "cuda":
        flags.update(CPU_FLAGS)
    base_chunk = DEFAULT_LOSS_CHUNK["tiny" if model.config.hidden_size < 1024 else "full"]
    model.loss_chunk_size = int(base_chunk * float(flags.pop("loss_chunk_fraction", 1.0)))
    if flags.pop("host_embedding", False) and isinstance(model.embed_tokens, torch.nn.Embedding):
        freed = keep_embedding_on_host(model)
        print(f"embedding table moved to host memory: {freed / 2**30:.2f} GiB freed on the device", flush=True)
    for key, value in flags.items():
        setattr(model, key, value)


def check_against_eager(model: DSparkDraftModel, variants: list[str], b: dict[str, torch.Tensor],
                        denom: float) -> dict[str, dict[str, float]]:
    """Loss and gradients of each variant against the eager reference on the same weights and batch."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    ref_loss, _ = run_step(model, "eager", b, None, denom)
    ref = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    res: dict[str, dict[str, float]] = {}
    for v in variants:
        if v == "eager" or VARIANTS[v].get("host_embedding"):  # same math as without (tests/model cover it)
            continue
        configure(model, v, b["input_ids"].device)
        model.zero_grad(set_to_none=True)
        loss, _ = run_step(model, v, b, None, denom)
        worst = max(relative_error(params[n].grad, g) for n, g in ref.items())
        res[v] = {"loss_rel": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)), "grad_rel_max": worst}
    model.zero_grad(set_to_none=True)
    return res


def bench_variant(model: DSparkDraftModel, opt: MasterAdamW | SplitMasterAdamW, variant: str,
                  batches: list[dict[str, torch.Tensor]],
                  device: torch.device, steps: int, warmup: int, denom: float,
                  host_batches: list[dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    configure(model, variant, device)
    timer_ref: list[Timer | None] = [None]
    rows: list[dict[str, float]] = []
    info: dict[str, float] = {}
    phase_peaks: dict[str, int] = {}
    copy_stream = torch.cuda.Stream() if (host_batches and device.type == "cuda") else None
    cfg = model.config
    staged_ids = [noise_input_ids(bb["input_ids"].cpu(), bb["anchors"].cpu(), cfg.block_size, cfg.mask_token_id)
                  for bb in batches] if isinstance(model.embed_tokens, HostEmbedding) else []

    def fetch(i: int) -> tuple[dict[str, torch.Tensor], Any]:
        if host_batches is None or copy_stream is None:
            return batches[i % len(batches)], None
        with torch.cuda.stream(copy_stream):
            dev_b = {k: v.to(device, non_blocking=True) for k, v in host_batches[i % len(host_batches)].items()}
            ev = torch.cuda.Event()
            ev.record(copy_stream)
        return dev_b, ev

    start = time.perf_counter()
    compile_s = 0.0
    nxt = fetch(0)
    with instrument(model, timer_ref):
        for i in range(warmup + steps):
            b, ev = nxt
            if ev is not None:
                torch.cuda.current_stream().wait_event(ev)
                for v in b.values():
                    v.record_stream(torch.cuda.current_stream())
            nxt = fetch(i + 1)  # the next sample's copy overlaps this step
            timer = Timer(device) if i >= warmup else None
            timer_ref[0] = timer
            if timer:
                timer.mark("start")
            if staged_ids:  # the data path has the micro-batch on the host: hand the embedding its ids
                assert isinstance(model.embed_tokens, HostEmbedding)
                model.embed_tokens.stage(staged_ids[i % len(staged_ids)], device)
            _, info = run_step(model, variant, b, timer, denom)
            opt.step()
            opt.zero_grad()
            if timer:
                timer.mark("optimizer")
                d = timer.durations()
                d["step"] = timer.total("start", "optimizer")
                rows.append(d)
                phase_peaks = dict(timer.peaks)
            if i == warmup - 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                compile_s = time.perf_counter() - start
    timer_ref[0] = None
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in ("forward", "loss_fwd", "backward", "loss_bwd",
                                                                        "optimizer", "step")}
    spread = (max(r["step"] for r in rows) - min(r["step"] for r in rows)) if rows else 0.0
    out = {
        "variant": variant,
        "step_s": med["step"],
        "step_spread_s": spread,
        "forward_s": med["forward"],
        "loss_logits_s": med["loss_fwd"] + med["loss_bwd"],
        "backward_s": med["backward"],
        "optimizer_s": med["optimizer"],
        "fwd_bwd_s": med["step"] - med["optimizer"],
        "warmup_s": compile_s,
        "peak_gib": (max([torch.cuda.max_memory_allocated(), *phase_peaks.values()]) / 2**30
                     if device.type == "cuda" else float("nan")),
        "peak_gib_by_phase": {k: v / 2**30 for k, v in phase_peaks.items()},
        "allocated_gib_after_step": torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        "target_rows": info.get("target_rows", float("nan")),
        "draft_rows": info.get("draft_rows", float("nan")),
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test of the same code)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 parameters on CPU too (always on CUDA)")
    parser.add_argument("--check", action="store_true", help="compare every variant with the eager reference")
    parser.add_argument("--accum", type=int, default=512,
                        help="micro-batches per optimizer step for the amortised samples/s (recipe: 512 / GPUs)")
    parser.add_argument("--out", default=None, help="directory for train_step.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    s = shape_for(args.tiny)
    cfg = model_config(s)
    dtype = torch.bfloat16 if device.type == "cuda" or args.bf16 else torch.float32
    torch.manual_seed(0)
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = DSparkDraftModel(cfg, attention_backend="auto",
                                 loss_chunk_size=DEFAULT_LOSS_CHUNK["tiny" if args.tiny else "full"])
    torch.set_default_dtype(prev_dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, trainable {n_train / 1e9:.3f} B, frozen {n_frozen / 1e9:.3f} B, "
          f"count {flops_per_sample(s) / 1e12:.2f} TFLOP/sample", flush=True)
    variants = [v for v in args.variants.split(",") if v]
    # a variant that moves the embedding to the host runs after all the others
    variants.sort(key=lambda v: bool(VARIANTS[v].get("host_embedding")))
    batches = [synthetic_batch(cfg, s.seq, device, dtype, seed) for seed in (1, 2)]
    host = [synthetic_batch(cfg, s.seq, device, dtype, seed, pin=device.type == "cuda") for seed in (1, 2)]
    denom = 1000.0  # a fixed global denominator (as for a step of many micro-batches)

    result: dict[str, Any] = {"device": name, "torch": torch.__version__, "shape": s.__dict__,
                              "count_flops": flops_per_sample(s), "peak_tflops": peak_tflops(name), "variants": []}
    if args.check:
        result["check"] = check_against_eager(model, variants, batches[0], denom)
        print("check vs eager:", json.dumps(result["check"]), flush=True)
    opt: MasterAdamW | SplitMasterAdamW | None = None
    opt_kind = ""
    for v in variants:
        kind = OPTIMIZER_OF.get(v, "master")
        if kind != "master" and dtype != torch.bfloat16:
            print(f"variant {v} skipped: SplitMasterAdamW keeps bf16 parameters (this run is {dtype})", flush=True)
            continue
        if kind != opt_kind:  # free the previous optimizer's state first, so that its memory is not counted
            opt = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            opt = build_optimizer(kind, params)
            opt_kind = kind
        assert opt is not None
        try:
            r = bench_variant(model, opt, v, batches, device, args.steps, args.warmup, denom,
                              host if v.endswith("_h2d") else None)
        except Exception as exc:  # keep the other variants' numbers
            print(f"variant {v} failed: {type(exc).__name__}: {exc}", flush=True)
            result["variants"].append({"variant": v, "error": f"{type(exc).__name__}: {exc}"})
            opt.zero_grad()
            continue
        fb = r["fwd_bwd_s"]
        r["samples_per_s_opt_each"] = 1.0 / r["step_s"]
        r["samples_per_s"] = 1.0 / (fb + r["optimizer_s"] / args.accum)
        r["mfu"] = r["samples_per_s"] * flops_per_sample(s) / (peak_tflops(name) * 1e12)
        lm_passes = (3.0, 2.0) if v == "baseline" else (2.0, 1.0)
        if v == "eager":
            r["executed_tflop"] = flops_per_sample(s) / 1e12
        else:
            r["executed_tflop"] = executed_flops(s, r["target_rows"], r["draft_rows"], *lm_passes) / 1e12
        r["achieved_tflops"] = r["executed_tflop"] / fb
        result["variants"].append(r)
        print(json.dumps(r), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / ("train_step_tiny.json" if args.tiny else "train_step.json")).write_text(
            json.dumps(result, indent=2))
    print(f"\n{'variant':15s} {'step ms':>8s} {'fwd+bwd':>8s} {'fwd':>6s} {'loss':>6s} {'bwd':>6s} {'opt':>6s} "
          f"{'smp/s':>6s} {'MFU':>6s} {'exec TF':>7s} {'TF/s':>6s} {'peak GiB':>8s}")
    for r in result["variants"]:
        if "error" in r:
            print(f"{r['variant']:15s} ERROR {r['error'][:80]}")
            continue
        print(f"{r['variant']:15s} {r['step_s'] * 1e3:8.1f} {r['fwd_bwd_s'] * 1e3:8.1f} {r['forward_s'] * 1e3:6.1f} "
              f"{r['loss_logits_s'] * 1e3:6.1f} {r['backward_s'] * 1e3:6.1f} {r['optimizer_s'] * 1e3:6.1f} "
              f"{r['samples_per_s']:6.2f} {r['mfu']:6.1%} {r['executed_tflop']:7.2f} {r['achieved_tflops']:6.0f} "
              f"{r['peak_gib']:8.2f}")
    ok = {r["variant"]: r for r in result["variants"] if "error" not in r}
    if "eager" in ok and "full" in ok:
        print(f"eager / full fwd+bwd time ratio: {ok['eager']['fwd_bwd_s'] / ok['full']['fwd_bwd_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
