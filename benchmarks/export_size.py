"""Sizes of an exported draft: what the trainer used to write (float32, with the target's embedding and LM
head) against the serving export (bf16 by default, frozen weights left out), for a target's config.json.

    python benchmarks/export_size.py                       # Qwen3-8B's sizes, the default draft options
    python benchmarks/export_size.py --target DIR --check  # a real target directory; --check also writes
                                                           # the tiny target's exports and compares file sizes

Payload bytes come from the checkpoint contract (`expected_weight_shapes`) and the export's dtype rules
(`model.serving`); a safetensors file adds an 8-byte length and a JSON header (a few KB) to them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

QWEN3_8B = {
    "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "num_hidden_layers": 36,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "hidden_act": "silu",
}

VARIANTS = {  # name -> (dtype, include_frozen)
    "before: float32 + embedding/LM head": ("float32", True),
    "float32, no embedding/LM head": ("float32", False),
    "bf16 + embedding/LM head (includeFrozenWeights)": ("bfloat16", True),
    "after: bf16, no embedding/LM head (default)": ("bfloat16", False),
}


def payload_bytes(cfg: Any, dtype: str, include_frozen: bool) -> int:
    from dspark_trainer.model.checkpoint import expected_weight_shapes
    from dspark_trainer.model.serving import FLOAT32_PREFIXES, FROZEN_WEIGHTS

    total = 0
    for name, shape in expected_weight_shapes(cfg).items():
        if name in FROZEN_WEIGHTS and not include_frozen:
            continue
        n = 1
        for d in shape:
            n *= d
        size = 4 if dtype == "float32" or name.startswith(FLOAT32_PREFIXES) else 2
        total += n * size
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, help="a target directory (default: Qwen3-8B's sizes)")
    parser.add_argument("--check", action="store_true", help="also export a tiny draft and compare file sizes")
    args = parser.parse_args()
    from dspark_trainer.config.draft import DraftOptions
    from dspark_trainer.model.config import read_target_config, resolve_model_config

    target_cfg = read_target_config(args.target) if args.target else QWEN3_8B
    cfg = resolve_model_config(target_cfg, DraftOptions())
    rows = {name: payload_bytes(cfg, *v) for name, v in VARIANTS.items()}
    before = rows["before: float32 + embedding/LM head"]
    out: dict[str, Any] = {
        "target": str(args.target or "Qwen3-8B sizes"),
        "draft": "default options (5 layers, vanilla r=256, confidence)",
        "payload_gb": {k: round(v / 1e9, 3) for k, v in rows.items()},
        "saved_vs_before_gb": {k: round((before - v) / 1e9, 3) for k, v in rows.items()},
    }
    if args.check:
        import torch
        from dspark_trainer.local.tiny_model import make_tiny_qwen3_target
        from dspark_trainer.model import build_draft_model, export_draft

        with tempfile.TemporaryDirectory() as tmp:
            tiny = make_tiny_qwen3_target(Path(tmp) / "t", num_layers=8)
            model = build_draft_model(tiny, DraftOptions(num_draft_layers=2, markov_rank=16))
            checks = {}
            for name, (dtype, frozen) in VARIANTS.items():
                d = export_draft(model, Path(tmp) / name.split(":")[0].replace(" ", "_"),
                                 dtype=getattr(torch, dtype), include_frozen=frozen)
                f = d / "model.safetensors"
                header = 8 + int.from_bytes(f.read_bytes()[:8], "little")
                checks[name] = {"file_bytes": f.stat().st_size, "payload_bytes": f.stat().st_size - header,
                                "predicted_payload_bytes": payload_bytes(model.config, dtype, frozen)}
            out["tiny_check"] = checks
            assert all(c["payload_bytes"] == c["predicted_payload_bytes"] for c in checks.values()), checks
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
