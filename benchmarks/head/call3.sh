# Device call 3 of the session of 2026-12-07 (forty-seventh): the bars on an H200
# (bars_h200.sh), else, on an H100, the int4 GEMV (rows in blocks of 16) at the 8B's four
# layer shapes, best and autotuned, to set beside the LM head's 88% of copy.
case "$(nvidia-smi --query-gpu=name --format=csv,noheader)" in
  *H200*) B=575 bash benchmarks/h200-quant/bars_h200.sh 2>&1 | tail -40 ;;
  *) PYTHONPATH=$PWD timeout 150 python3 benchmarks/kernels/sweep_gemv.py --schemes int4 --int4-row-block 16 \
       --json $OUT/layers_int4_rb16.json 2>&1 | tail -6 | tee $OUT/layers_int4_rb16.log ;;
esac
