#!/usr/bin/env bash
# The prepared calls 3 (training) and 4 (measuring) in one device call (a machine goes back 30 s after
# a call, and with it the trained models): both wider demo models trained at once on the H200, then
# measured there.
# The shipped model's figures are already on record (fp8 97.73% on the H200, run-m; CPU builds in
# quant-demo/builds_cpu.json; margins in quant-demo/fp8_margins.json), so it is not measured again.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import sys, torch; print(sys.version, torch.__version__)"
S=${S:-"python3 tools/train_demo_model.py --compile --demo-weight-decay 0.3 --demo-variants 0.5:1800 --demo-time-limit 300 --draft-from kiln/demo/draft-model"}
mkdir -p /tmp/logs
# should anything run long, the logs still come back before the call's 600 s are up
(sleep 575; tar czf $OUT/logs.tgz -C /tmp logs nd640.log nd768.log) &
for shape in 640:4:10:2:1536 768:3:12:4:1536; do
  tag=${shape%%:*}
  (OMP_NUM_THREADS=8 timeout 330 $S --out /tmp/nd$tag --demo-shape $shape > /tmp/nd$tag.log 2>&1;
   echo "train $tag rc $?" >> /tmp/nd$tag.log) &
  pids="$pids $!"
done
wait $pids; pids=
for tag in 640 768; do
  cp /tmp/nd$tag.log /tmp/logs/train$tag.log; cp /tmp/nd$tag.log /tmp/nd$tag/training_log.txt 2>/dev/null
  cp /tmp/nd$tag/report.json /tmp/logs/report$tag.json
done
# at most 8 files come back: logs.tgz, margins.json, builds.json, the model in 3 parts, rest.tgz
# measurements: margins on 6 CPU threads, the CPU builds on 4 threads each, beside the fp8 builds on the GPU
OMP_NUM_THREADS=6 timeout 150 python3 benchmarks/quant-demo/fp8_margins.py /tmp/nd640/demo-model /tmp/nd768/demo-model --json $OUT/margins.json > /tmp/logs/margins.log 2>&1 &
pids=$!
for tag in 640 768; do
  m=/tmp/nd$tag/demo-model
  (timeout 60 python3 -m kiln.cli build $m --output /tmp/b-nd$tag-fp8 --quant fp8 --overwrite --no-progress > /tmp/bl-$tag-fp8 2>&1
   for q in int8-wo int4-wo; do
     OMP_NUM_THREADS=4 timeout 90 python3 -m kiln.cli build $m --output /tmp/b-nd$tag-$q --quant $q --target-gpu cpu --device cpu --overwrite --no-progress > /tmp/bl-$tag-$q 2>&1
   done) &
  pids="$pids $!"
done
wait $pids
cat /tmp/bl-* > /tmp/logs/measure.log
python3 - $OUT <<'PY' 2>&1 | tee -a /tmp/logs/measure.log
import json, pathlib, sys, subprocess
rows, best = {}, None
for d in sorted(pathlib.Path("/tmp").glob("b-*")):
    try:
        a = json.loads((d / "engine.json").read_text())["accuracy"]
    except Exception as e:
        print(d.name, "no report:", e); continue
    rows[d.name] = a
    print(d.name, a.get("top1_agreement"), a.get("mean_kl"))
pathlib.Path(sys.argv[1], "builds.json").write_text(json.dumps(rows, indent=1))
for tag in ("nd640", "nd768"):
    t = lambda q: rows.get(f"b-{tag}-{q}", {}).get("top1_agreement", 0)
    ok = t("int8-wo") >= 0.97 and t("int4-wo") >= 0.90
    print(tag, "fp8", t("fp8"), "int8-wo", t("int8-wo"), "int4-wo", t("int4-wo"), "other bars kept" if ok else "FAILS a bar")
    if ok and (best is None or t("fp8") > best[1]):
        best = (tag, t("fp8"))
print("best", best)
if best:
    src = "/tmp/" + best[0]
    subprocess.run(f"cd {src} && split -b 15M demo-model/model.safetensors {sys.argv[1]}/st.part. && "
                   f"tar czf {sys.argv[1]}/rest.tgz --exclude model.safetensors demo-model report.json README.md training_log.txt",
                   shell=True, check=True)
PY
tar czf $OUT/logs.tgz -C /tmp logs
ls -la $OUT
