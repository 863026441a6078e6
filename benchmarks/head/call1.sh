set -x
nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm --format=csv,noheader
case "$(nvidia-smi --query-gpu=name --format=csv,noheader)" in
  *H200*) B=470 bash benchmarks/h200-quant/bars_h200.sh 2>&1 | tail -30 ;;
esac
timeout 110 bash benchmarks/head/head_sweep.sh 2>&1 | tail -20
