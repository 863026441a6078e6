#!/usr/bin/env bash
# run-k call 6: the pipelined int4 double-word loop (KILN_INT4_PIPE=1) against the plain one,
# per 8B layer at batch 1 (every config and split; each checked against the reference).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
for p in 1 0; do
  KILN_INT4_PIPE=$p timeout 45 python3 benchmarks/kernels/sweep_gemv.py --schemes int4 --json $OUT/sweep_int4_pipe$p.json 2>&1 | grep -v "^copy" | sed "s/^/pipe=$p /"
done
