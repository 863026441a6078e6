#!/usr/bin/env bash
# Demo-model engines built on the CPU with the CLI defaults; their accuracy reports and build
# times are collected into a JSON file beside this script.
#   bash run_cpu_builds.sh          the schemes -> builds_cpu.json
#   bash run_cpu_builds.sh heads    each scheme with and without a quantized LM head (the demo
#                                   ties its head to the embedding: the head gets a quantized
#                                   copy of the table, the embedding keeps the float one)
#                                   -> heads_cpu.json
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
KILN=${KILN:-kiln}
DEMO=$(python3 -c "import kiln.demo as d; print(d.DEMO_MODEL)" 2>/dev/null || .venv/bin/python -c "import kiln.demo as d; print(d.DEMO_MODEL)")
OUT=$(mktemp -d)
SET=${1:-builds}
build() { local name=$1; shift; $KILN build "$DEMO" --output "$OUT/$name" "$@" --no-progress; }
if [ "$SET" = heads ]; then
  build int4-wo --quant int4-wo
  build int4-wo+int4-head --quant int4-wo --lm-head-quant int4-wo
  build int4-wo+int8-head --quant int4-wo --lm-head-quant int8-wo
  build int8-wo --quant int8-wo
  build int8-wo+int8-head --quant int8-wo --lm-head-quant int8-wo
  build fp8-h200 --quant fp8 --target-gpu h200
  build fp8-h200+fp8-head --quant fp8 --lm-head-quant fp8 --target-gpu h200
else
  build int8-wo --quant int8-wo
  build int4-wo --quant int4-wo
  build fp8-h200 --quant fp8 --target-gpu h200
  build int8-wo-kv8 --quant int8-wo --kv-cache-dtype fp8
fi
python3 - "$OUT" "$HERE/${SET}_cpu.json" "$SET" <<'PY'
import json, pathlib, sys
out = {}
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    info = json.loads((d / "engine.json").read_text())
    if sys.argv[3] == "heads":  # the whole quantization record: the head's scheme is in it
        out[d.name] = {"quantization": info["quantization"], "target": info["target"]["name"],
                       "accuracy": info["accuracy"], "build": info["build"]}
    else:
        out[d.name] = {"quantization": info["quantization"]["scheme"], "kv_cache": info["kv_cache"]["dtype"],
                       "target": info["target"]["name"], "accuracy": info["accuracy"],
                       "calibration": info["quantization"]["calibration"], "build": info["build"]}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
PY
rm -rf "$OUT"
