#!/usr/bin/env bash
# run-k call 3: the GEMV autotuner timed from memory (the torch.sum fix of call 2's failure):
# the tests call 2 failed on, per-layer autotuned choice, 8B int4-wo engines tuned that way,
# without and with the split candidates (KILN_GEMV_TUNE_SPLIT=1).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
( timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_engine_gpu.py tests/gpu/test_quant_gpu.py -k "graphs_equals_eager or autotuned or tuning or tuner" -n 8 > $OUT/tests.log 2>&1; echo "rc=$?" >> $OUT/tests.log ) &
TP=$!
python3 -m kiln.cli random-model --preset llama-3-8b --out /tmp/llama-3-8b --device cuda 2>&1 | tail -1
wait $TP
tail -4 $OUT/tests.log
for sp in 0 1; do
  KILN_GEMV_TUNE_SPLIT=$sp timeout 45 python3 benchmarks/kernels/sweep_gemv.py --schemes int4 --autotuned-only --json $OUT/auto_memory_split$sp.json 2>&1 | grep -v "^copy" | sed "s/^/memory split=$sp /"
done
QUANT=int4-wo VARIANTS="memory=" timeout 150 bash benchmarks/run_variants_h200.sh
BUILD_ENV="KILN_GEMV_TUNE_SPLIT=1" BUILD_TAG=-split QUANT=int4-wo VARIANTS="split=KILN_GEMV_TUNE_SPLIT=1" timeout 160 bash benchmarks/run_variants_h200.sh
python3 - <<"P"
import json, os
for l in open(os.environ['OUT']+'/variants.jsonl'):
    d=json.loads(l); print(d['quant'], d['variant'], d['run'], round(d.get('decode_tokens_per_s') or d.get('output_tokens_per_s') or 0, 1))
P
