#!/usr/bin/env bash
# call 1: full GPU tests (L2 prefetch test included), then KILN_L2_NEXT variants at batch 1, bf16 and fp8
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpu_tests.log
timeout 200 python3 -m pytest tests/gpu -n 8 -q -p no:cacheprovider 2>&1 | tail -15 >> $OUT/gpu_tests.log
QUANT=none VARIANTS="base=;o=KILN_L2_NEXT=o_proj;o_gu=KILN_L2_NEXT=o_proj,gate_up_proj;all=KILN_L2_NEXT=all;all16=KILN_L2_NEXT=all KILN_L2_NEXT_MB=16;base2=" timeout 240 bash benchmarks/run_variants_h200.sh
QUANT=fp8 VARIANTS="base=;o=KILN_L2_NEXT=o_proj;all=KILN_L2_NEXT=all" timeout 150 bash benchmarks/run_variants_h200.sh
