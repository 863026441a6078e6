#!/usr/bin/env bash
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
( timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_gpu.py tests/gpu/test_engine_gpu.py tests/gpu/test_fp8_kv_gpu.py -k "quantizes_its_output or producer_quant or decode_attention" -n 8 > $OUT/tests.log 2>&1; echo "rc=$?" >> $OUT/tests.log ) &
TP=$!
[ -d /tmp/llama-3-8b ] || python3 -m kiln.cli random-model --preset llama-3-8b --out /tmp/llama-3-8b --device cuda 2>&1 | tail -1
wait $TP
tail -4 $OUT/tests.log
QUANT=fp8 VARIANTS="base=;attnq=KILN_ATTN_QUANT_OUT=1;attnq2=KILN_ATTN_QUANT_OUT=1;base2=" timeout 200 bash benchmarks/run_variants_h200.sh
python3 - <<"P"
import json, os
for l in open(os.environ['OUT']+'/variants.jsonl'):
    d=json.loads(l); print(d['quant'], d['variant'], d['run'], round(d.get('decode_tokens_per_s') or d.get('output_tokens_per_s') or 0, 1))
P
