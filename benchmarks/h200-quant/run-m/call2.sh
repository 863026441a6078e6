#!/usr/bin/env bash
# call 2: the int4 FMA GEMV's stream-K candidate at BLOCK_N 128 x 4 per SM: GPU tests, int4-wo 8B batch 1
# with the new candidate set against none (each engine built and run with its setting), the
# tuned gate_up choice from each engine.json; then bf16 1000 x 128/128 at 1024 sequences
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/call2_tests.log
git log --oneline -1 >> $OUT/call2_tests.log 2>/dev/null
timeout 100 python3 -m pytest tests/gpu/test_quant_gpu.py -n 8 -q -p no:cacheprovider -k "gemv" 2>&1 | tail -4 >> $OUT/call2_tests.log
QUANT=int4-wo VARIANTS="new=" timeout 170 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_TAG=-nosk BUILD_ENV="KILN_GEMV_STREAM_K=0" VARIANTS="nosk=KILN_GEMV_STREAM_K=0" timeout 150 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo VARIANTS="new2=" timeout 45 bash benchmarks/run_variants_h200.sh
for e in /tmp/e8b-int4-wo /tmp/e8b-int4-wo-nosk; do
  python3 - "$e" >> $OUT/variants.log <<'PY'
import json, sys
t = json.load(open(sys.argv[1] + "/engine.json"))["kernel_tuning"]
print(sys.argv[1], t.get("status"), t.get("seconds"), "s")
for e in t.get("results", []):
    if "gemv" in e["kernel"]:
        print(" ", e["kernel"], e["key"][:5], e["config"], e["num_warps"], e["num_stages"])
PY
done
QUANT=none TP=1 B1=0 VARIANTS="base=" timeout 100 bash benchmarks/run_variants_h200.sh
