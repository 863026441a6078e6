#!/usr/bin/env bash
# Device call 1 of the persistent-chain prototype (at most 570 s; a fresh H200): is one
# persistent launch of the decode step's GEMVs, with a grid barrier a phase, faster than a
# launch a phase (the engine's kernels under PDL, and the same kernel launched per phase)?
# 1. the small correctness check on the GPU, bf16, fp8 and int4 (P = 1, 3, 7 and every SM);
# 2. the 8B chain (32 layers x 4 GEMVs + the LM head): bf16 (15.0 GB), fp8 (7.5 GB), int4
#    (4.0 GB with group scales), each against the engine's kernel for that weight kind.
#   bash benchmarks/h200-persistent/call1.sh     (OUT set by the device tool)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
P=benchmarks/kernels/proto_persistent_chain.py
timeout 150 python3 $P --check-only > $OUT/check.log 2>&1
echo "check rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -c " ok$" $OUT/check.log; grep -v " ok$" $OUT/check.log | tail -5
for kind in bf16 fp8 int4; do
  case $kind in bf16) limit=170 ;; fp8) limit=140 ;; *) limit=$((565 - SECONDS + T0)) ;; esac
  timeout $limit python3 $P --layers 32 --weights $kind --json $OUT/chain32_$kind.json \
    > $OUT/chain32_$kind.log 2>&1
  echo "chain32 $kind rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  cat $OUT/chain32_$kind.log
done
