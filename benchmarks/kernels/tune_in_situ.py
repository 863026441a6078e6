"""Tune an engine's decode GEMVs by the time of the whole captured decode step (CUDA).

Loads the model or engine as `kiln bench latency` would, records the tuned GEMV launches of one
decode step at --batch-size (kiln.tune.in_situ.slots_of), then runs coordinate descent over their
candidate configurations, each trial timed as replays of a freshly captured decode graph at
--context tokens per sequence. Afterwards the engine's own choices and the chosen ones are timed
again, alternating, so the reported gain is not the minimum of many noisy trials. --write stores
the chosen configurations in an engine directory's engine.json (kernel_tuning.results, the entries
loading seeds the autotuners with) and records the run under kernel_tuning.in_situ. The search is
kiln.tune.in_situ.tune_decode_step, the one `kiln build` runs (--step-tuning-batch-sizes).

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
from kiln.tune import in_situ


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
    print(f"start-up {startup:.1f} s")
    best, record = in_situ.tune_decode_step(engine, args.batch_size, args.context, args.reps,
                                            args.windows, args.rounds, args.min_gain, args.confirm)
    if not best:
        raise SystemExit("the decode step launches no autotuned GEMV (nothing to tune)")
    result = {"model": args.model, **record, "seconds": time.perf_counter() - t0,
              "environment": common.environment(engine.runner.device)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.write:
        path = Path(args.model) / "engine.json"
        if not path.is_file():
            raise SystemExit(f"--write needs an engine directory (kiln build); {path} does not exist")
        info = json.loads(path.read_text())
        try:
            info["kernel_tuning"] = in_situ.store_choices(info.get("kernel_tuning") or {}, best, record)
        except ValueError as exc:
            raise SystemExit(f"{path}: {exc}")
        path.write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {len(best)} choices to {path}")


if __name__ == "__main__":
    main()
