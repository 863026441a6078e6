#!/usr/bin/env bash
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt 2>&1
( timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gpu.py -k prefetch -n 4 > $OUT/tests.log 2>&1; echo "rc=$?" >> $OUT/tests.log ) &
TP=$!
python3 -m kiln.cli random-model --preset llama-3-8b --out /tmp/llama-3-8b --device cuda 2>&1 | tail -1
wait $TP
tail -3 $OUT/tests.log
QUANT=fp8 VARIANTS="base=;early=KILN_PDL_EARLY=1;early_pf4=KILN_PDL_EARLY=1 KILN_GEMV_PREFETCH=4;early_pfall=KILN_PDL_EARLY=1 KILN_GEMV_PREFETCH=100000;early_pf24mb=KILN_PDL_EARLY=1 KILN_GEMV_PREFETCH=100000 KILN_GEMV_PREFETCH_MB=24;pf4=KILN_GEMV_PREFETCH=4;base2=" timeout 420 bash benchmarks/run_variants_h200.sh
python3 - <<"P"
import json
for l in open('/tmp/out/variants.jsonl' if False else __import__('os').environ['OUT']+'/variants.jsonl'):
    d=json.loads(l); print(d['quant'], d['variant'], {k:v for k,v in d.items() if 'tok' in k or 'tpot' in k.lower()})
P
