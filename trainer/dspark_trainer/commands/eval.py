"""`dspark eval`: real speculative decoding of DSpark drafts with their target on prompt sets.

For every draft, prompt set and temperature it decodes the prompts with the target alone and with the draft
(KV caches on both, exact greedy at temperature 0, rejection sampling above), and reports tau, per-position
acceptance, tokens/s of both, the speedup, the confidence head's calibration and the early-stop result, as
a table (stdout) and JSON (``--output``). See docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draft", action="append", required=True, metavar="DIR",
                        help="exported DSpark/DFlash draft directory; repeat to compare drafts")
    parser.add_argument("--target", required=True, metavar="DIR", help="the target model directory")
    parser.add_argument("--checkpoint", default=None, metavar="STEP_DIR",
                        help="evaluate the weights of this training checkpoint (checkpoint.dir/step-N) of the draft")
    parser.add_argument("--name", action="append", default=None,
                        help="display name of each --draft (default: the directory name)")
    sets = parser.add_argument_group("prompts")
    sets.add_argument("--prompt-set", action="append", default=None,
                      help="mt-bench, humaneval or sharegpt (held-out slice); repeat for several (default mt-bench)")
    sets.add_argument("--prompts", action="append", default=None, metavar="FILE.jsonl",
                      help="one's own prompts (messages, prompt or turns per line); repeatable")
    sets.add_argument("--num-prompts", type=int, default=None, help="the first N prompts of each set (default: all)")
    sets.add_argument("--system-prompt", default=None, help="system message put before each prompt")
    sets.add_argument("--enable-thinking", action="store_true", help="render the chat template with thinking on")
    sets.add_argument("--max-prompt-tokens", type=int, default=2048, help="keep the last N prompt tokens (2048)")
    dec = parser.add_argument_group("decoding")
    dec.add_argument("--temperature", action="append", type=float, default=None,
                     help="0 = exact greedy; > 0 = rejection sampling; repeatable (default 0)")
    dec.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default 1)")
    dec.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per prompt (default 256)")
    dec.add_argument("--confidence-threshold", type=float, default=0.5,
                     help="early-stop pass: proposals end before the first slot with confidence below it; 0 = skip")
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    dec.add_argument("--target-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, default=None, help="write the reports as a JSON list here")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from dspark_trainer.eval import EvalOptions, Evaluator, format_table
    from dspark_trainer.eval.prompts import PromptError

    names = args.name or []
    if names and len(names) != len(args.draft):
        print(f"dspark eval: --name was given {len(names)} times for {len(args.draft)} --draft", file=sys.stderr)
        return 2
    prompt_sets = (args.prompt_set or []) + (args.prompts or []) or ["mt-bench"]
    temperatures = args.temperature or [0.0]
    try:
        options = EvalOptions(
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
            confidence_threshold=args.confidence_threshold, system_prompt=args.system_prompt,
            template_kwargs={"enable_thinking": bool(args.enable_thinking)}, max_prompt_tokens=args.max_prompt_tokens,
            progress=not args.no_progress,
        )
        if args.num_prompts is not None and args.num_prompts < 1:
            raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
        evaluator = Evaluator(args.target, device=args.device, target_dtype=args.target_dtype, options=options)
        drafts = [evaluator.load_draft(d, args.checkpoint) for d in args.draft]
        reports = []
        for i, draft in enumerate(drafts):
            name = names[i] if names else Path(args.draft[i]).name
            for prompt_set in prompt_sets:
                for temp in temperatures:
                    reports.append(evaluator.evaluate(draft, name, prompt_set, args.num_prompts, temp))
    except (PromptError, ValueError, FileNotFoundError) as exc:
        print(f"dspark eval: {exc}", file=sys.stderr)
        return 2
    print(format_table(reports))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
        print(f"reports written to {args.output}")
    return 0
