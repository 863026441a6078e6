#!/usr/bin/env bash
# One device call: `kiln serve` on the Llama-3-8B architecture (random bf16 weights), then
# `kiln bench serve` at 2 requests/s and at saturation, 467 input and 256 output tokens.
# Needs fastapi/uvicorn/pydantic on the machine, carried as py3.12 wheels in the git-ignored .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl fastapi==0.165.0 \
#     starlette==1.10.0 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 uvicorn==0.54.0 typing_extensions==4.16.0 opentelemetry-api==1.45.2
# and in the device call, first: python3 -m pip install -q --no-index --no-deps --no-compile \
#   --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
M=/tmp/llama-3-8b
PORT=${PORT:-8011}
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda
python3 -m kiln.cli serve $M --port $PORT --max-num-batched-tokens ${MAX_TOKENS:-8192} > "$OUT/serve_server.log" 2>&1 &
PID=$!
python3 - "$PORT" <<'PY'
import sys, time, urllib.request
for _ in range(240):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(1)
sys.exit("server did not become healthy")
PY
python3 -m kiln.cli bench serve --base-url http://127.0.0.1:$PORT --request-rates ${RATES:-2,inf} \
  --num-prompts ${NUM_PROMPTS:-200} --random-input-len 467 --random-output-len 256 \
  --json "$OUT/serve_8b.json" --plot "$OUT/serve_8b.png" 2>&1 | tee "$OUT/serve_bench.log"
python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics').read().decode())" > "$OUT/serve_metrics.txt"
kill -TERM $PID; wait $PID; echo "server exit code $?" | tee -a "$OUT/serve_bench.log"
