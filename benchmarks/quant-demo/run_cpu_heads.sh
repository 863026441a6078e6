#!/usr/bin/env bash
# The demo model's engines with a quantized LM head (the demo ties its head to the token
# embedding: the head gets a quantized copy of the table, the embedding keeps the float one),
# each beside the same scheme with the head left in the model dtype; their accuracy reports and
# build times are collected into heads_cpu.json beside this script.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
KILN=${KILN:-kiln}
DEMO=$(python3 -c "import kiln.demo as d; print(d.DEMO_MODEL)" 2>/dev/null || .venv/bin/python -c "import kiln.demo as d; print(d.DEMO_MODEL)")
OUT=$(mktemp -d)
$KILN build "$DEMO" --output "$OUT/int4-wo" --quant int4-wo --no-progress
$KILN build "$DEMO" --output "$OUT/int4-wo+int4-head" --quant int4-wo --lm-head-quant int4-wo --no-progress
$KILN build "$DEMO" --output "$OUT/int4-wo+int8-head" --quant int4-wo --lm-head-quant int8-wo --no-progress
$KILN build "$DEMO" --output "$OUT/int8-wo" --quant int8-wo --no-progress
$KILN build "$DEMO" --output "$OUT/int8-wo+int8-head" --quant int8-wo --lm-head-quant int8-wo --no-progress
$KILN build "$DEMO" --output "$OUT/fp8-h200" --quant fp8 --target-gpu h200 --no-progress
$KILN build "$DEMO" --output "$OUT/fp8-h200+fp8-head" --quant fp8 --lm-head-quant fp8 --target-gpu h200 --no-progress
python3 - "$OUT" "$HERE/heads_cpu.json" <<'PY'
import json, pathlib, sys
out = {}
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    info = json.loads((d / "engine.json").read_text())
    out[d.name] = {"quantization": info["quantization"], "target": info["target"]["name"],
                   "accuracy": info["accuracy"], "build": info["build"]}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
PY
rm -rf "$OUT"
