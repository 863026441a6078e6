#!/usr/bin/env bash
# Device call 2 (at most 580 s; one machine for both when starts are scarce): call1.sh (the int4
# mma prototype, at most 200 s here), then the ring's call6.sh with fewer engine variants.
#   bash benchmarks/h200-mma-int4/call2.sh     (OUT set by the device tool)
T0=$SECONDS
mkdir -p $OUT/mma $OUT/ring
OUT=$OUT/mma timeout 200 bash benchmarks/h200-mma-int4/call1.sh
OUT=$OUT/ring B=$((575 - SECONDS + T0)) \
  AB_VARIANTS="tc=KILN_RING_GEMV=0;tcS=KILN_RING_GEMV=0 KILN_PDL_TRIGGER=early;e4S=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early;fusedS=KILN_RING_GEMV=fused KILN_PDL_TRIGGER=early;fused=KILN_RING_GEMV=fused" \
  bash benchmarks/h200-ring/call6.sh
