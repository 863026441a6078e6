#!/usr/bin/env bash
# run-k call 4: 8B int4-wo at batch 1 on one machine, the LM head in bf16 (default) and in fp8
# (kiln build --lm-head-quant fp8).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -m kiln.cli random-model --preset llama-3-8b --out /tmp/llama-3-8b --device cuda 2>&1 | tail -1
QUANT=int4-wo VARIANTS="base=" timeout 150 bash benchmarks/run_variants_h200.sh
BUILD_ARGS="--lm-head-quant fp8" BUILD_TAG=-head8 QUANT=int4-wo VARIANTS="head8=" timeout 150 bash benchmarks/run_variants_h200.sh
python3 - <<"P"
import json, os
for l in open(os.environ['OUT']+'/variants.jsonl'):
    d=json.loads(l); print(d['quant'], d['variant'], d['run'], round(d.get('decode_tokens_per_s') or d.get('output_tokens_per_s') or 0, 1))
P
