#!/usr/bin/env bash
# Prepared in the session of 2026-12-06 (forty-second), for an H200 (stops at once on another card
# unless ANY_CARD=1; at most B = 480 s): #7's fp8 1000 x 128/128 bar, this tree against OLD (default
# 8ba40d7, the tree of run-w call 4 that gave 32,126 / 32,236) on one machine. Each tree builds
# its own engine (fp8, fp8 LM head, no step tuning, --max-batch-size 1024), then
# `kiln bench throughput` alternates old, new, old, new with an fp8 KV cache and 32,768-token steps.
# The old kiln package comes from the device copy's git history (git archive), or from OLD_SRC:
# made here by `git archive 8ba40d7 kiln | tar -x -C .old-kiln` (demo weights excluded), carried.
#   bash benchmarks/h200-quant/ab_fp8_throughput.sh     (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
B=${B:-480}
OLD=${OLD:-8ba40d7}
LOG=$OUT/ab_fp8_throughput.log
atleast() { [ $1 -lt $2 ] && echo $2 || echo $1; }  # a build's limit: what is left, but not below $2
# (a build on a cold Triton cache took 78 s on an H100, 2026-12-07; 60 s cut the first one off)
echo "card: $card; old tree $OLD" | tee -a $LOG
h200_only
rm -rf /tmp/old-kiln && mkdir -p /tmp/old-kiln
if [ -n "${OLD_SRC:-}" ]; then  # the old kiln package, carried (the device copy may have no git history)
  cp -r $OLD_SRC/kiln /tmp/old-kiln/ || exit 1
else
  git archive $OLD kiln | tar -x -C /tmp/old-kiln || { echo "no tree $OLD here" | tee -a $LOG; exit 1; }
fi
[ -d $M ] || PYTHONPATH=$PWD python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
echo "model ready at $((SECONDS - T0)) s" | tee -a $LOG
BA=$FP8_BUILD
# Each tree runs from its own directory: `python3 -m` puts the working directory ahead of
# PYTHONPATH, so the old tree run from this checkout's root would import this checkout's kiln
# (the first run of this script, 2026-12-07, compared this tree with itself that way).
NEW=$PWD
for P in /tmp/old-kiln $NEW; do
  (cd $P && PYTHONPATH=$P python3 -c "import kiln; print('kiln from', kiln.__file__)") | tee -a $LOG
done
(cd /tmp/old-kiln && PYTHONPATH=/tmp/old-kiln timeout $(atleast $(left 330) 150) python3 -m kiln.cli build $M --output /tmp/e-old $BA 2>&1 | grep -v Warning | tail -3 >> $LOG)
echo "old build at $((SECONDS - T0)) s" | tee -a $LOG
PYTHONPATH=$NEW timeout $(atleast $(left 230) 120) python3 -m kiln.cli build $M --output /tmp/e-new $BA --no-kernel-cache 2>&1 | grep -v Warning | tail -3 >> $LOG
echo "new build at $((SECONDS - T0)) s" | tee -a $LOG
for i in 1 2; do
  for T in old new; do
    P=$NEW; [ $T = old ] && P=/tmp/old-kiln
    tp_run ${T}_$i $P /tmp/e-$T 5
  done
done
tail -12 $LOG
