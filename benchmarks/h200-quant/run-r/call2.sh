#!/usr/bin/env bash
# Ran on tree 013ee15 (call 1's machine, warm). The demo model's fp8 accuracy report with and without
# fast accumulation (call 1's log kept only the step-tuning lines). The --lm-head-quant fp8 builds
# were refused: the demo model ties its head to the token embedding.
export PYTHONPATH=$PWD; for fa in 0 1; do for h in none fp8; do KILN_FP8_FAST_ACCUM=$fa timeout 100 python3 -m kiln.cli build kiln/demo/demo-model --output /tmp/demo-fp8-$fa-$h --quant fp8 --lm-head-quant $h --step-tuning-batch-sizes none --overwrite --no-progress 2>&1 | grep -E "top-1|built" | sed "s/^/fast_accum=$fa head=$h: /" | tee -a $OUT/demo_fp8.log; done; done
