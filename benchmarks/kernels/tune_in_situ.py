"""Tune an engine's decode GEMVs by the time of the whole captured decode step (CUDA).

Loads the model or engine as `kiln bench latency` would, records the tuned GEMV launches of one
decode step at --batch-size (kiln.tune.in_situ.slots_of), then runs coordinate descent over their
candidate configurations, each trial timed as replays of a freshly captured decode graph at
--context tokens per sequence. Afterwards the engine's own choices and the chosen ones are timed
again, alternating, so the reported gain is not the minimum of many noisy trials. --write stores
the chosen configurations in an engine directory's engine.json (kernel_tuning.results, the entries
loading seeds the autotuners with) and records the run under kernel_tuning.in_situ.

    PYTHONPATH=. python3 benchmarks/kernels/tune_in_situ.py --model ENGINE_DIR --batch-size 1 \
        --context 256 --json OUT.json [--write]

The candidates are the autotuners' own (kiln.kernels.quant_matmul._candidates), so switches such
as KILN_TC_STREAM_K=1 widen them. The tensor-core GEMV's tuning key does not hold the row count
(every decode batch up to 16 rows shares it), the FMA GEMV's holds BLOCK_M (1, 2 or 4).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kiln.bench import common
from kiln.kernels import PDL_MAX_BATCH, pdl_scope
from kiln.kernels import quant_matmul as qm
from kiln.tune import in_situ


def config_json(cfg) -> dict:
    return {"config": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--context", type=int, default=256, help="tokens per sequence in the timed step")
    ap.add_argument("--reps", type=int, default=50, help="graph replays per timing window")
    ap.add_argument("--windows", type=int, default=5, help="timing windows per trial (median)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--min-gain", type=float, default=0.002,
                    help="a candidate must shorten the step by this fraction to replace the current one")
    ap.add_argument("--confirm", type=int, default=3, help="alternating re-timings of before / after")
    ap.add_argument("--json", default=None)
    ap.add_argument("--write", action="store_true", help="store the choices in ENGINE_DIR/engine.json")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        raise SystemExit("tune_in_situ.py times CUDA graphs: it needs a CUDA GPU")
    t0 = time.perf_counter()
    engine, startup = common.start_engine(args.model, dict(max_num_seqs=max(8, args.batch_size)))
    runner = engine.runner
    max_len = engine.max_model_len
    kernels = {n: k for n, k in qm.tuned_kernels().items() if n in in_situ.GEMV_KERNELS}

    probe = in_situ.decode_graphs(runner, args.batch_size, args.context, max_len)  # never captured

    def forward():
        with torch.inference_mode(), pdl_scope(args.batch_size <= PDL_MAX_BATCH):
            probe._forward(args.batch_size)
        torch.cuda.synchronize()

    forward()  # anything not yet tuned is tuned here, outside the recording
    slots = in_situ.slots_of(forward, kernels)
    del probe
    if not slots:
        raise SystemExit("the decode step launches no autotuned GEMV (nothing to tune)")
    start = {s: kernels[s[0]].cache[s[1]] for s in slots}
    cands = {s: in_situ.slot_candidates(kernels[s[0]], s[1], qm._candidates(s[0]))
             for s in slots}
    print(f"{len(slots)} GEMV slots, {sum(len(c) for c in cands.values())} candidates; "
          f"start-up {startup:.1f} s")

    def measure(assign):
        in_situ.set_configs(kernels, assign)
        return in_situ.graph_step_ms(runner, args.batch_size, args.context, max_len, args.reps,
                                     args.windows)

    best, best_ms, trace = in_situ.coordinate_descent(slots, cands, start, measure, args.rounds,
                                                      args.min_gain, in_situ.same_config)
    before, after = [], []
    for _ in range(args.confirm):
        before.append(measure(start))
        after.append(measure(best))
    in_situ.set_configs(kernels, best)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"step {med(before):.4f} -> {med(after):.4f} ms (confirm runs: {before} / {after})")
    changed = []
    for s in slots:
        if not in_situ.same_config(start[s], best[s]):
            changed.append({"kernel": s[0], "key": list(s[1]), "from": config_json(start[s]),
                            "to": config_json(best[s])})
            print(f"  {s[0]} {s[1][:4]}: {start[s]} -> {best[s]}")
    result = {
        "model": args.model, "batch_size": args.batch_size, "context": args.context,
        "reps": args.reps, "windows": args.windows, "rounds": args.rounds,
        "min_gain": args.min_gain, "slots": len(slots), "trials": len(trace) - 1,
        "step_ms_before": before, "step_ms_after": after, "changed": changed,
        "trace": [{"kernel": t["slot"][0] if t["slot"] else None,
                   "key": list(t["slot"][1]) if t["slot"] else None,
                   **(config_json(t["config"]) if t["config"] is not None else {}),
                   "ms": t["cost"], **({"error": t["error"]} if "error" in t else {})}
                  for t in trace],
        "seconds": time.perf_counter() - t0, "environment": common.environment(runner.device),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.write:
        path = Path(args.model) / "engine.json"
        if not path.is_file():
            raise SystemExit(f"--write needs an engine directory (kiln build); {path} does not exist")
        info = json.loads(path.read_text())
        tuning = info.get("kernel_tuning") or {}
        if tuning.get("status") != "tuned":
            raise SystemExit(f"{path}: no stored kernel tuning to update (status "
                             f"{tuning.get('status')!r})")
        entries = [e for e in tuning.get("results", [])
                   if (e["kernel"], tuple(e["key"])) not in best]
        for (name, key), cfg in best.items():
            entries.append({"kernel": name, "key": list(key), **config_json(cfg)})
        tuning["results"] = entries
        tuning["in_situ"] = {k: result[k] for k in ("batch_size", "context", "rounds", "min_gain",
                                                     "step_ms_before", "step_ms_after")}
        path.write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {len(best)} choices to {path}")


if __name__ == "__main__":
    main()
