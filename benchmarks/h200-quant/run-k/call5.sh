#!/usr/bin/env bash
# run-k call 5 (the command as run, on call 4's machine): the bf16-head int4-wo engine rebuilt
# with the default tuner (Triton's do_bench), then the fp8-head engine of call 4 again.
rm -rf /tmp/e8b-int4-wo; export PYTHONPATH=$PWD; QUANT=int4-wo VARIANTS="base_triton=" timeout 130 bash benchmarks/run_variants_h200.sh >/dev/null 2>&1; BUILD_TAG=-head8 QUANT=int4-wo VARIANTS="head8_again=" timeout 60 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1; cat $OUT/variants.log; python3 -c "
import json, os
for l in open(os.environ['OUT']+'/variants.jsonl'):
    d=json.loads(l); print(d['quant'], d['variant'], d['run'], round(d.get('decode_tokens_per_s') or 0, 1))"
