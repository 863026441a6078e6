#!/usr/bin/env bash
# Device call 10 (at most 560 s): what the build's batch-1 choice does for the quantized
# engines. Their LM head (bf16) and embedding table let the ring path apply, so the step tuning
# now times it for fp8 and int4-wo engines too (the ring head, the small kernels early). Builds
# the fp8 and int4-wo 8B engines (run_variants_h200.sh prints each build's choice), then batch 1
# 128/256 on each; an earlier call's b1 numbers on the same card are the comparison (the engines
# of call_head8.sh / call_fold.sh: fp8 276.9, int4-wo 366.5 tok/s on an H100).
#   bash benchmarks/h200-ring/call10.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
for Q in fp8 int4-wo; do
  left=$((550 - SECONDS + T0)); [ $left -lt 90 ] && break
  QUANT=$Q VARIANTS="tuned=" timeout $left bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  echo "$Q rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
done
grep -E "build|ring path|decode step|^==|decode" $OUT/variants.log
for Q in fp8 int4-wo; do
  python3 -c "import json; t=json.load(open('/tmp/e8b-$Q/engine.json'))['kernel_tuning']; print('$Q', t.get('batch1_gemv'), [r.get('batch1_ring') for r in t.get('in_situ', [])])" \
    2>&1 | tee -a $OUT/choices.log
done
