#!/usr/bin/env bash
# run-k call 1: int4 GEMV with float16 products (KILN_INT4_F16 2 = double words, 1 = words,
# 0 = float32 products): GPU tests, per-layer sweep, 8B int4-wo engine at batch 1.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt 2>&1
( timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gpu.py -k "int4 or every_gemv_candidate" -n 8 > $OUT/tests.log 2>&1; echo "rc=$?" >> $OUT/tests.log ) &
TP=$!
python3 -m kiln.cli random-model --preset llama-3-8b --out /tmp/llama-3-8b --device cuda 2>&1 | tail -1
wait $TP
tail -4 $OUT/tests.log
for f in 2 1 0; do
  KILN_INT4_F16=$f timeout 60 python3 benchmarks/kernels/sweep_gemv.py --schemes int4 --json $OUT/sweep_int4_f16_$f.json 2>&1 | grep -v "^copy" | sed "s/^/f16=$f /"
done
QUANT=int4-wo VARIANTS="dword=;f32=KILN_INT4_F16=0;word=KILN_INT4_F16=1" timeout 280 bash benchmarks/run_variants_h200.sh
python3 - <<"P"
import json, os
for l in open(os.environ['OUT']+'/variants.jsonl'):
    d=json.loads(l); print(d['quant'], d['variant'], d['run'], round(d.get('decode_tokens_per_s') or d.get('output_tokens_per_s') or 0, 1))
P
