#!/usr/bin/env bash
# For the next machine, call 7 (about 300 s): the FMA GEMV's register-capped candidates
# (fma_gemv.GEMV_MAXNREG_CONFIGS, KILN_GEMV_MAXNREG=1). The int4 GEMV is latency-bound at low
# occupancy (run-l's ncu); the caps raise the programs per SM without spilling (sm_90 SASS).
# First the GPU bit test (capped = uncapped bits), then the int4 sweep at batch 1 of the capped
# candidates beside their uncapped twins, every split. If a cap wins, call 8 runs the engines.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 150 python3 -m pytest -q -n 4 tests/gpu/test_quant_gpu.py -k "register_capped" \
  > $OUT/gpu_tests_maxnreg.log 2>&1
tail -4 $OUT/gpu_tests_maxnreg.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((570 - SECONDS + T0)) python3 benchmarks/kernels/sweep_gemv.py --schemes int4 \
  --int4-maxnreg --json $OUT/sweep_int4_maxnreg.json > $OUT/sweep_int4_maxnreg.log 2>&1
grep -v "^  " $OUT/sweep_int4_maxnreg.log
python3 - <<'PY'
import json, os
d = json.load(open(os.path.join(os.environ["OUT"], "sweep_int4_maxnreg.json")))
for r in d["results"]:
    best = {}
    for row in r["rows"]:
        k = "capped" if row.get("maxnreg") else "uncapped"
        best[k] = min(best.get(k, 1e9), row["us"])
    print(r["shape"], best, "autotuned", r.get("autotuned_us"))
PY
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
