# Device call 4 of the session of 2026-12-07 (forty-seventh). On an H200: bars_h200.sh. On
# another card: the int4-wo 8B engine (int4 LM head) at batch 1 128/256 with and without
# KILN_GEMV_EARLY_GROUP=1 (ab_latency.py, one process, alternating), then the GPU tests of
# that switch and of the int4 row blocks.
case "$(nvidia-smi --query-gpu=name --format=csv,noheader)" in
  *H200*) B=575 bash benchmarks/h200-quant/bars_h200.sh 2>&1 | tail -40; exit ;;
esac
. benchmarks/device_env.sh
export PYTHONPATH=$PWD
B=${B:-560}
LOG=$OUT/early_group.log
echo "card: $card" | tee $LOG
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
timeout $(left 250) python3 -m kiln.cli build $M --output /tmp/e-int4 --quant int4-wo --lm-head-quant int4-wo \
  --calib-samples 32 --step-tuning-batch-sizes none --no-kernel-cache --max-batch-size 1024 --eval-tokens 0 \
  --overwrite --no-progress 2>&1 | grep -v Warning | tail -2 >> $LOG
echo "engine at $((SECONDS - T0)) s" | tee -a $LOG
t=$(left 100)
timeout $((t < 200 ? t : 200)) python3 benchmarks/ab_latency.py --model /tmp/e-int4 \
  --variants "base=;early=KILN_GEMV_EARLY_GROUP=1" --rounds 3 --json $OUT/b1_int4_early_ab.json 2>&1 | tail -6 | tee -a $LOG
echo "a/b at $((SECONDS - T0)) s" | tee -a $LOG
t=$(left 5)
timeout $t python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_quant_gpu.py \
  -k "early_group or row_block or prefetch" 2>&1 | tail -5 | tee -a $LOG
echo "tests at $((SECONDS - T0)) s" | tee -a $LOG
