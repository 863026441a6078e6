#!/usr/bin/env bash
# Ran on tree 013ee15 (call 1's machine, warm, its /tmp/e8b-fp8-head engine: --lm-head-quant fp8,
# --step-tuning-batch-sizes none). KILN_FP8_FAST_ACCUM was still off by default on this tree.
export PYTHONPATH=$PWD OUT; ls /tmp/e8b-fp8-head >/dev/null && QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head VARIANTS="headfast_kv8=KILN_FP8_FAST_ACCUM=1 --kv-cache-dtype=fp8;headfast2=KILN_FP8_FAST_ACCUM=1;head_nofast=" timeout 200 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
