#!/usr/bin/env bash
# call 3: stream-K GEMVs: GPU tests, per-layer race, bf16 (and fp8) 8B batch 1 with and without
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/call3_tests.log
timeout 120 python3 -m pytest tests/gpu/test_quant_gpu.py -n 8 -q -p no:cacheprovider -k "tensor_core or gemv" 2>&1 | tail -8 >> $OUT/call3_tests.log
timeout 170 python3 benchmarks/kernels/bench_stream_k.py --json $OUT/stream_k_h200.json > $OUT/call3_stream_k.log 2>&1
QUANT=none VARIANTS="sk=;nosk=KILN_TC_STREAM_K=0" timeout 150 bash benchmarks/run_variants_h200.sh
QUANT=fp8 VARIANTS="sk=;nosk=KILN_TC_STREAM_K=0" timeout 100 bash benchmarks/run_variants_h200.sh
