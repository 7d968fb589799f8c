#!/usr/bin/env bash
# The issue-8 GPU suite on one 4-GPU machine (results under $RES, packed into $OUT/results.tgz after
# every phase, so a timeout still returns what finished):
#
#   A  train_step_bench.py on GPU 3 (all variants + check against the eager reference)
#      || the full pipeline: capture server on GPU 2, Mooncake, trainer ranks on GPUs 0 and 1
#   B  FSDP2 weak scaling on 1 GPU (GPU 3) || on 2 GPUs (GPUs 0, 1)
#   C  FSDP2 weak scaling on 4 GPUs
#
#   bash benchmarks/run_gpu_suite.sh [all|A|B|C|BC]
#
# Needs PYTHONPATH with trainer/ (+ the pydantic / mooncake wheels there; see benchmarks/RESULTS.md for
# the exact device command). NVLink multicast stays off.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-results}
R=${RES:-/tmp/res}
TA=${TA:-300}; TB=${TB:-150}; TC=${TC:-130}
mkdir -p "$OUT" "$R"
pack() { tar czf "$OUT/results.tgz" -C "$R" . 2>/dev/null; }
phase=${1:-all}
nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm,power.limit --format=csv > "$R/gpus.csv" 2>&1
python3 -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.device_count())' >> "$R/gpus.csv" 2>&1
cat "$R/gpus.csv"
has() { case "$phase" in all|*"$1"*) return 0;; *) return 1;; esac; }

if has A; then
  t0=$(date +%s)
  a=
  if [ -z "${PIPELINE_ONLY:-}" ]; then
    CUDA_VISIBLE_DEVICES=3 timeout "$TA" python3 benchmarks/train_step_bench.py --check --warmup 2 --out "$R" \
      > "$R/train_step.log" 2>&1 &
    a=$!
  fi
  bin=$(dirname "$(python3 -c 'import sys; print(sys.executable)')")   # the pipeline starts `dspark` there
  [ -x "$bin/dspark" ] || printf '#!/bin/sh\nexec %s -m dspark_trainer.cli "$@"\n' "$(command -v python3)" > "$bin/dspark"
  chmod +x "$bin/dspark"
  timeout -k 20 "$((TA - 20))" python3 benchmarks/pipeline_gpu_run.py --nproc 2 --capture-gpu 2 \
    --steps "${PIPE_STEPS:-30}" --skip 8 --workdir /tmp/pipe --out "$R" > "$R/pipeline.log" 2>&1
  echo "pipeline rc=$? $(( $(date +%s) - t0 )) s"
  mkdir -p "$R/pipe_logs"; cp /tmp/pipe/logs/*.log "$R/pipe_logs/" 2>/dev/null
  cp /tmp/pipe/pipeline-config.yaml "$R/" 2>/dev/null
  [ -n "$a" ] && { wait $a; echo "train_step rc=$?"; }
  echo "phase A $(( $(date +%s) - t0 )) s"; pack
fi
if has B; then
  t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=3 timeout "$TB" torchrun --nproc-per-node 1 --master-port 29512 \
    benchmarks/fsdp_scaling_bench.py --settings runtime,lean --out "$R" > "$R/fsdp_w1.log" 2>&1 &
  b=$!
  CUDA_VISIBLE_DEVICES=0,1 timeout "$TB" torchrun --nproc-per-node 2 --master-port 29511 \
    benchmarks/fsdp_scaling_bench.py --out "$R" > "$R/fsdp_w2.log" 2>&1
  echo "fsdp w2 rc=$?"; wait $b; echo "fsdp w1 rc=$? phase B $(( $(date +%s) - t0 )) s"; pack
fi
if has C; then
  t0=$(date +%s)
  timeout "$TC" torchrun --nproc-per-node 4 --master-port 29513 benchmarks/fsdp_scaling_bench.py \
    --out "$R" > "$R/fsdp_w4.log" 2>&1
  echo "fsdp w4 rc=$? phase C $(( $(date +%s) - t0 )) s"; pack
fi
for f in train_step pipeline fsdp_w1 fsdp_w2 fsdp_w4; do
  [ -f "$R/$f.log" ] && { echo "== $f"; grep -v -i "warn" "$R/$f.log" | tail -${TAILN:-9}; }
done
