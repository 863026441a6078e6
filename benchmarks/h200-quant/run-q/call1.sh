#!/usr/bin/env bash
# Ran on tree afa38a9 (the PIPE code); that code was removed in 23c98fa after these results.
# Session of 2026-12-03 (twelfth), call 1. The FMA GEMV's software-pipelined K loop (PIPE stages of
# cp.async copies through shared memory; candidates under KILN_GEMV_PIPE=1): its GPU bit test and
# run-p's early-group bit test, the int4 per-layer sweep with and without pipelining, then the
# int4-wo 8B engine at batch 1 built and run without and with the pipelined candidates.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$SECONDS
timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_quant_gpu.py -k "pipelined or early_group" 2>&1 | tail -6 | tee $OUT/tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 120 python3 benchmarks/kernels/sweep_gemv.py --schemes int4 --pipes 1,3,4 --json $OUT/sweep_int4_pipe.json 2>&1 | tail -8 | tee $OUT/sweep.log
echo "sweep done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
export OUT
B="--step-tuning-batch-sizes none"
QUANT=int4-wo BUILD_ARGS="$B" VARIANTS="base=" timeout 240 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_ARGS="$B" BUILD_TAG=-pipe BUILD_ENV="KILN_GEMV_PIPE=1" VARIANTS="pipe=KILN_GEMV_PIPE=1" timeout 110 bash benchmarks/run_variants_h200.sh
echo "first pair done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
[ $((SECONDS - T0)) -lt 500 ] && QUANT=int4-wo BUILD_ARGS="$B" VARIANTS="eg=KILN_GEMV_EARLY_G=1" timeout 40 bash benchmarks/run_variants_h200.sh
[ $((SECONDS - T0)) -lt 535 ] && QUANT=int4-wo BUILD_ARGS="$B" BUILD_TAG=-pipe VARIANTS="pipe2=KILN_GEMV_PIPE=1" timeout 40 bash benchmarks/run_variants_h200.sh
python3 - <<'PY' > $OUT/pipe_choices.txt 2>&1
import json
for tag in ("", "-pipe"):
    e = json.load(open(f"/tmp/e8b-int4-wo{tag}/engine.json"))
    for t in e.get("kernel_tuning", {}).get("results", []):
        if t.get("kernel") == "gemv":
            print(tag or "base", t["key"][:5], t["config"], t["num_warps"], t["num_stages"])
PY
cat $OUT/pipe_choices.txt | head -20
echo "all done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
