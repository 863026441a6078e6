#!/usr/bin/env bash
# Demo-model engines built on the CPU with the CLI defaults; their accuracy reports and build
# times are collected into builds_cpu.json beside this script.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
KILN=${KILN:-kiln}
DEMO=$(python3 -c "import kiln.demo as d; print(d.DEMO_MODEL)" 2>/dev/null || .venv/bin/python -c "import kiln.demo as d; print(d.DEMO_MODEL)")
OUT=$(mktemp -d)
$KILN build "$DEMO" --output "$OUT/int8-wo" --quant int8-wo --no-progress
$KILN build "$DEMO" --output "$OUT/int4-wo" --quant int4-wo --no-progress
$KILN build "$DEMO" --output "$OUT/fp8-h200" --quant fp8 --target-gpu h200 --no-progress
$KILN build "$DEMO" --output "$OUT/int8-wo-kv8" --quant int8-wo --kv-cache-dtype fp8 --no-progress
python3 - "$OUT" "$HERE/builds_cpu.json" <<'PY'
import json, pathlib, sys
out = {}
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    info = json.loads((d / "engine.json").read_text())
    out[d.name] = {"quantization": info["quantization"]["scheme"], "kv_cache": info["kv_cache"]["dtype"],
                   "target": info["target"]["name"], "accuracy": info["accuracy"],
                   "calibration": info["quantization"]["calibration"], "build": info["build"]}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
PY
rm -rf "$OUT"
