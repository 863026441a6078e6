#!/usr/bin/env bash
# Ran on tree 013ee15.
# Session of 2026-12-03 (thirteenth), call 1: fp8 GEMM accumulation and scaling modes.
# 1. torch._scaled_mm per 8B layer at decode and prefill row counts: row-wise (the engine's call),
#    row-wise with use_fast_accum, tensor-wise (cuBLASLt), fp8 lm_head; error of each.
# 2. The demo model's fp8 accuracy report with and without KILN_FP8_FAST_ACCUM=1.
# 3. fp8 8B engine, 1000 x 128/128 at 1024 sequences: default against KILN_FP8_FAST_ACCUM=1,
#    then an engine with an fp8 lm_head (--lm-head-quant fp8) with fast accumulation.
# 4. bench_overlap.py: one half-batch's decode attention beside the other's GEMMs, on two streams.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt 2>&1
timeout 150 python3 benchmarks/kernels/bench_gemm_rows.py --rows 256,512,768,1008,1024,2048,8192 \
  --schemes bf16,fp8,fp8fast,fp8tw,fp8twfast,fp8head,fp8headfast --reps 10 --json $OUT/gemm_modes.json \
  > $OUT/gemm_modes.log 2>&1
echo "gemm modes done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 90 python3 benchmarks/kernels/bench_overlap.py --schemes fp8,fp8fast,bf16 --json $OUT/overlap.json \
  > $OUT/overlap.log 2>&1
echo "overlap done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
for fa in 0 1; do
  KILN_FP8_FAST_ACCUM=$fa timeout 120 python3 -m kiln.cli build kiln/demo/demo-model --output /tmp/demo-fp8-$fa \
    --quant fp8 --overwrite --no-progress 2>&1 | tail -2 | sed "s/^/fast_accum=$fa: /" | tee -a $OUT/demo_fp8.log
done
echo "demo done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=1 B1=0 BUILD_ARGS="--step-tuning-batch-sizes none" \
  VARIANTS="base=;fast=KILN_FP8_FAST_ACCUM=1;base2=;fast2=KILN_FP8_FAST_ACCUM=1" \
  timeout $((560 - (SECONDS - T0) - 110)) bash benchmarks/run_variants_h200.sh
echo "variants done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="headfast=KILN_FP8_FAST_ACCUM=1" timeout $((585 - (SECONDS - T0))) bash benchmarks/run_variants_h200.sh
echo "all done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
