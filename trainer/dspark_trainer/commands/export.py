"""`dspark export`: write an exported draft again for serving, in another dtype or with(out) the frozen weights.

    dspark export DRAFT_DIR --out SERVE_DIR [--dtype bfloat16|float16|float32] [--include-frozen-weights --target DIR]

DRAFT_DIR is a draft the trainer exported (``status.draftPath``), e.g. one written with
``export.dtype: float32`` or ``export.includeFrozenWeights: true``. The output is in the draft's serving
format (DSPARK, or DFLASH for ``markovRank: 0``); the defaults are the trainer's: bf16, no embedding / LM
head (SGLang and vLLM take them from the target). ``--include-frozen-weights`` copies them from the draft,
or from ``--target`` (a local target directory) when the draft has none. Prints what each engine cannot serve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "dspark export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("draft", metavar="DRAFT_DIR",
                        help="an exported draft directory (config.json + model.safetensors)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the serving checkpoint")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the weights (default bfloat16; the confidence head stays float32)")
    parser.add_argument("--include-frozen-weights", action="store_true",
                        help="also write the embedding and LM head (for engines that read them from the draft)")
    parser.add_argument("--target", metavar="DIR", help="the target model directory, to take the embedding and LM "
                        "head from when the draft has none")


def run(args: argparse.Namespace) -> int:
    import torch

    from dspark_trainer.model.checkpoint import export_checkpoint, has_frozen_weights, import_checkpoint
    from dspark_trainer.model.serving import SERVING_DTYPES, serving_format, serving_warnings
    from dspark_trainer.model.target_weights import load_vocab_weights

    if Path(args.out).resolve() == Path(args.draft).resolve():
        print(f"{PROG}: --out must differ from DRAFT_DIR", file=sys.stderr)
        return 2
    try:
        cfg, state = import_checkpoint(args.draft)
        if args.include_frozen_weights and not has_frozen_weights(state):
            if not args.target:
                raise ValueError(f"{args.draft} has no embedding / LM head: give --target DIR to take them from")
            embed, head = load_vocab_weights(args.target, dtype=torch.float32)
            state = {**state, "embed_tokens.weight": embed, "lm_head.weight": head}
        out = export_checkpoint(state, cfg, args.out, dtype=SERVING_DTYPES[args.dtype],
                                include_frozen=args.include_frozen_weights)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {out} ({serving_format(cfg)} format, {args.dtype}, "
          f"{'with' if args.include_frozen_weights else 'without'} the embedding / LM head)")
    for warning in serving_warnings(cfg):
        print(f"{PROG}: warning: {warning}")
    return 0
