#!/usr/bin/env bash
# Device call 13 (at most B = 560 s; the A/B at the end as time allows): why the int4 ring (kiln.kernels.ring_int4) loses in the
# int4-wo 8B engine though it streams gate_up faster alone (call 11). Builds the engine, then
# profiles 64 batch-1 decode steps (one 128/256 request; profile_engine.py) with PDL off (so a
# kernel's duration is its own, not its wait for the one before) and on, each with the ring on
# gate_up (KILN_RING_INT4=1) and off. If gate_up's own time falls with the ring while the step
# rises, the ring slows its neighbours (its programs, two ~96 KB an SM, hold the SMs the next
# kernels wait for, and its early copies compete with them); if gate_up's own time rises, the
# kernel itself is slower in the step (x laid out by every program, the cold start).
#   bash benchmarks/h200-ring/call13.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-560}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
E=/tmp/e8b-int4-wo-head-none
[ -d $E ] || timeout 300 python3 -m kiln.cli build $M --output $E --quant int4-wo --eval-tokens 0 \
  --calib-samples 32 --max-batch-size 1024 --overwrite --no-progress > $OUT/build_int4.log 2>&1
echo "engine at $((SECONDS - T0)) s" | tee -a $OUT/times.log
for PDL in 0 auto; do
  for R in 0 1; do
    left=$((B - 5 - SECONDS + T0)); [ $left -lt 40 ] && break 2
    KILN_PDL=$PDL KILN_RING_INT4=$R timeout $left python3 benchmarks/profile/profile_engine.py --model $E \
      --num-prompts 1 --input-len 128 --output-len 256 --skip-steps 64 --steps 64 --top 25 \
      --json $OUT/prof_int4_pdl${PDL}_ring$R.json > $OUT/prof_int4_pdl${PDL}_ring$R.log 2>&1
    echo "profile PDL=$PDL ring=$R rc $? at $((SECONDS - T0)) s: $(grep -m1 -i 'wall' $OUT/prof_int4_pdl${PDL}_ring$R.log)" \
      | tee -a $OUT/times.log
  done
done
grep -h -E "_ring_int4_kernel|_gemv_kernel" $OUT/prof_int4_pdl0_ring*.log | head -8
# Then a shallower ring (fewer bytes of shared memory a program, so that the next kernels'
# programs fit beside it) and one program an SM, against the FMA GEMV, alternating.
left=$((B - 5 - SECONDS + T0))
[ $left -lt 60 ] && { echo "no A/B ($left s left)"; exit 0; }
timeout $left python3 benchmarks/ab_latency.py --model $E --rounds 2 --json $OUT/ab_ring_int4_stages.json \
  --variants "off=KILN_RING_INT4=0;on=KILN_RING_INT4=1;s3=KILN_RING_INT4=1 KILN_RING_STAGES=3;s2=KILN_RING_INT4=1 KILN_RING_STAGES=2;p1=KILN_RING_INT4=1 KILN_RING_PER_SM=1" \
  > $OUT/ab_ring_int4_stages.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -7 $OUT/ab_ring_int4_stages.log
