#!/usr/bin/env bash
# One 2-GPU device call (after benchmarks/device_setup.sh): the FSDP2 weak-scaling bench with the
# runtime's settings (lean: frozen embedding/LM head out of FSDP in bf16, fused AdamW) and the old
# ones, at 2 and 1 GPUs, then the full pipeline with 2 trainer ranks (pinned side-stream H2D in the
# remote source). On a 2-GPU machine the capture server shares GPU 1 with trainer rank 1.
#
#   bash benchmarks/run_lean_pipeline_gpu.sh        # results under $OUT (or ./results)
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
t0=$(date +%s)
S="--steps ${FSDP_STEPS:-6} --warmup 2 --opt-steps 2 --settings runtime,old_runtime"
CUDA_VISIBLE_DEVICES=0,1 timeout -k 5 "${T2:-100}" torchrun --nproc-per-node 2 --master-port 29521 \
  benchmarks/fsdp_scaling_bench.py $S --out "$OUT" > "$OUT/fsdp_w2.log" 2>&1
echo "fsdp w2 rc=$? $(( $(date +%s) - t0 )) s"
CUDA_VISIBLE_DEVICES=0 timeout -k 5 "${T1:-80}" torchrun --nproc-per-node 1 --master-port 29522 \
  benchmarks/fsdp_scaling_bench.py $S --out "$OUT" > "$OUT/fsdp_w1.log" 2>&1
echo "fsdp w1 rc=$? $(( $(date +%s) - t0 )) s"
bin=$(dirname "$(python3 -c 'import sys; print(sys.executable)')")   # the pipeline starts `dspark` there
[ -x "$bin/dspark" ] || printf '#!/bin/sh\nexec %s -m dspark_trainer.cli "$@"\n' "$(command -v python3)" > "$bin/dspark"
chmod +x "$bin/dspark"
timeout -k 10 "${TP:-170}" python3 benchmarks/pipeline_gpu_run.py --nproc 2 --capture-gpu 1 \
  --steps "${PIPE_STEPS:-14}" --skip "${PIPE_SKIP:-5}" --workdir /tmp/pipe --out "$OUT" > "$OUT/pipeline.log" 2>&1
echo "pipeline rc=$? $(( $(date +%s) - t0 )) s"
tar czf "$OUT/pipe_logs.tgz" -C /tmp/pipe logs 2>/dev/null
for f in fsdp_w2 fsdp_w1; do echo "== $f"; grep -v -i warn "$OUT/$f.log" | tail -4; done
echo "== pipeline"; grep -v -i warn "$OUT/pipeline.log" | tail -3
