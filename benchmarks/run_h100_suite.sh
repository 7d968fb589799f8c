#!/usr/bin/env bash
# The issue-5/8 GPU measurements on one 4-GPU machine, in two device calls of < 10 minutes each
# (after `source benchmarks/device_setup.sh`). Results go to $RES and are packed into
# $OUT/results-<phase>.tgz after every phase, so a timeout still returns what finished.
#
#   bash benchmarks/run_h100_suite.sh 1    # train_step_bench (GPU 3) || two pipeline runs (GPUs 0-2)
#   bash benchmarks/run_h100_suite.sh 2    # FSDP2 scaling 1 || 2 GPUs, then 4 GPUs; pipeline, 2 capture GPUs
#   bash benchmarks/run_h100_suite.sh x1   # one-GPU machine: GPU tests, train_step_bench, FSDP2 on 1 GPU
#   bash benchmarks/run_h100_suite.sh x2   # two-GPU machine: the pipeline, capture server sharing GPU 1
#
# Phase 1: the one-GPU step (all variants, checked against the eager reference) on GPU 3, while the
#   full pipeline runs with 2 trainer ranks (GPUs 0, 1): first with the capture server on its own GPU 2,
#   then sharing GPU 1 with rank 1 (the layout of a 2-GPU machine).
# Phase 2: FSDP2 weak scaling (runtime_defer = the trainer's default, runtime, lean_noreshard) on 1 GPU
#   (GPU 3) at the same time as on 2 GPUs (GPUs 0, 1), then on 4 GPUs alone; then the pipeline with
#   2 trainer ranks fed by two capture servers (GPUs 2, 3).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-results}
R=${RES:-/tmp/res}
phase=${1:?phase 1, 2, x1 or x2}
mkdir -p "$OUT" "$R"
pack() { tar czf "$OUT/results-$phase.tgz" -C "$R" . 2>/dev/null; }
nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm,power.limit --format=csv > "$R/gpus.csv" 2>&1
python3 -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.device_count())' >> "$R/gpus.csv" 2>&1
cat "$R/gpus.csv"
bin=$(dirname "$(python3 -c 'import sys; print(sys.executable)')")   # the pipeline starts `dspark` there
[ -x "$bin/dspark" ] || printf '#!/bin/sh\nexec %s -m dspark_trainer.cli "$@"\n' "$(command -v python3)" > "$bin/dspark"
chmod +x "$bin/dspark"
t0=$(date +%s)
since() { echo "$(( $(date +%s) - t0 )) s"; }

pipeline() {  # name, extra args...
  local name=$1; shift
  timeout -k 10 "${TP:-175}" python3 benchmarks/pipeline_gpu_run.py --nproc 2 --steps "${PIPE_STEPS:-16}" \
    --skip "${PIPE_SKIP:-6}" --workdir "/tmp/pipe-$name" --out "$R/pipe-$name" "$@" > "$R/pipeline-$name.log" 2>&1
  echo "pipeline $name rc=$? $(since)"
  mkdir -p "$R/pipe-$name"; cp /tmp/pipe-"$name"/logs/*.log "$R/pipe-$name/" 2>/dev/null
  pack
}

if [ "$phase" = 1 ]; then
  CUDA_VISIBLE_DEVICES=3 timeout 60 python3 -m pytest -q --noconftest -p no:cacheprovider tests/optim \
    > "$R/pytest_optim_gpu.log" 2>&1; echo "pytest tests/optim on the GPU rc=$? $(since)"; tail -2 "$R/pytest_optim_gpu.log"
  CUDA_VISIBLE_DEVICES=3 timeout "${TA:-400}" python3 benchmarks/train_step_bench.py --check --warmup 2 \
    --variants "${VARIANTS:-eager,baseline,fused,fused_compiled,full,full_h2d,full_split,full_split_c512,full_offload}" \
    --out "$R" > "$R/train_step.log" 2>&1 &
  a=$!
  pipeline own --capture-gpu 2
  pipeline shared --capture-gpu 1
  wait $a; echo "train_step rc=$? $(since)"; pack
  grep -v -i warn "$R/train_step.log" | tail -14
fi
if [ "$phase" = x1 ]; then
  timeout 90 python3 -m pytest -q --noconftest -p no:cacheprovider tests/optim tests/model/test_host_embedding.py \
    > "$R/pytest_gpu.log" 2>&1; echo "pytest GPU tests rc=$? $(since)"; tail -2 "$R/pytest_gpu.log"
  timeout "${TA:-400}" python3 benchmarks/train_step_bench.py ${CHECK---check} --warmup 2 \
    --variants "${VARIANTS:-eager,baseline,fused,fused_compiled,full,full_h2d,full_split,full_split_c512,full_offload,full_split_host}" \
    --out "$R" > "$R/train_step.log" 2>&1
  echo "train_step rc=$? $(since)"; pack
  grep -v -i warn "$R/train_step.log" | tail -14
  [ -n "${SKIP_FSDP:-}" ] || timeout "${TB:-120}" torchrun --nproc-per-node 1 --master-port 29512 benchmarks/fsdp_scaling_bench.py \
    --steps 6 --warmup 2 --opt-steps 2 --settings "${SETTINGS:-runtime_defer,runtime}" --out "$R" > "$R/fsdp_w1.log" 2>&1
  echo "fsdp w1 rc=$? $(since)"; pack
  grep -v -i warn "$R/fsdp_w1.log" | tail -4
fi
if [ "$phase" = x2 ]; then
  pipeline shared --capture-gpu 1
fi
if [ "$phase" = 2 ]; then
  S="--steps ${FSDP_STEPS:-6} --warmup 2 --opt-steps 2 --settings ${SETTINGS:-runtime_defer,runtime,lean_noreshard}"
  CUDA_VISIBLE_DEVICES=3 timeout "${TB:-170}" torchrun --nproc-per-node 1 --master-port 29512 \
    benchmarks/fsdp_scaling_bench.py $S --out "$R" > "$R/fsdp_w1.log" 2>&1 &
  b=$!
  CUDA_VISIBLE_DEVICES=0,1 timeout "${TB:-170}" torchrun --nproc-per-node 2 --master-port 29511 \
    benchmarks/fsdp_scaling_bench.py $S --out "$R" > "$R/fsdp_w2.log" 2>&1
  echo "fsdp w2 rc=$? $(since)"; wait $b; echo "fsdp w1 rc=$? $(since)"; pack
  timeout "${TC:-170}" torchrun --nproc-per-node 4 --master-port 29513 benchmarks/fsdp_scaling_bench.py $S \
    --out "$R" > "$R/fsdp_w4.log" 2>&1
  echo "fsdp w4 rc=$? $(since)"; pack
  [ -n "${SKIP_PIPE2:-}" ] || pipeline two --capture-gpus 2,3 --window "${PIPE_WINDOW:-16}"
  [ -z "${PIPE_SHARED:-}" ] || pipeline shared --capture-gpu 1
  for f in fsdp_w1 fsdp_w2 fsdp_w4; do echo "== $f"; grep -v -i warn "$R/$f.log" | tail -5; done
fi
for f in "$R"/pipeline-*.log; do [ -f "$f" ] && { echo "== $f"; grep -v -i warn "$f" | tail -2; }; done
