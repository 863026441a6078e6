"""cuBLAS's default choice against PyTorch's TunableOp (which times cuBLAS / cuBLASLt algorithms per
shape) for the bf16 GEMMs of Llama-3-8B at decode and prefill row counts.

Each (rows, layer) product x [M, K] @ W[N, K].T is timed by CUDA-graph replays, first as cuBLAS
picks it, then after TunableOp has tuned that shape in this process. Reported: microseconds,
TFLOP/s, GB/s of weight reads, and the speed-up. The tuned choices are written to a CSV.

    PYTHONPATH=. python3 benchmarks/kernels/bench_gemm_tunable.py --json OUT.json --csv OUT.csv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench_kernels  # noqa: E402

LAYERS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}
ROWS = [1, 1024, 8192]
LM_HEAD_MAX_ROWS = 1024  # the lm_head only runs on the rows that sample


def time_linear(x: torch.Tensor, ws: list[torch.Tensor]) -> float:
    return bench_kernels.time_calls([lambda w=w: torch.nn.functional.linear(x, w) for w in ws], reps=20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--rows", default=",".join(map(str, ROWS)))
    ap.add_argument("--iterations", type=int, default=20, help="TunableOp timing iterations per candidate")
    ap.add_argument("--duration-ms", type=int, default=30, help="TunableOp timing budget per candidate")
    args = ap.parse_args()
    tunable = torch.cuda.tunable
    tunable.set_filename(args.csv)
    tunable.set_max_tuning_iterations(args.iterations)
    tunable.set_max_tuning_duration(args.duration_ms)
    results = []
    t0 = time.time()
    for m in map(int, args.rows.split(",")):
        for name, (n, k) in LAYERS.items():
            if name == "lm_head" and m > LM_HEAD_MAX_ROWS:
                continue
            w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            ws = [w0] + [torch.randn_like(w0) * 0.02 for _ in range(bench_kernels.n_sets(w0.numel() * 2, cap=8) - 1)]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            tunable.enable(False)
            want = torch.nn.functional.linear(x, w0).float()
            default_us = time_linear(x, ws)
            tunable.enable(True)
            tunable.tuning_enable(True)
            torch.nn.functional.linear(x, w0)  # tunes this shape (outside capture)
            torch.cuda.synchronize()
            tunable.tuning_enable(False)
            got = torch.nn.functional.linear(x, w0).float()
            tuned_us = time_linear(x, ws)
            tunable.enable(False)
            flop = 2 * m * n * k
            row = {"M": m, "layer": name, "N": n, "K": k, "default_us": round(default_us, 2),
                   "tuned_us": round(tuned_us, 2), "speedup": round(default_us / tuned_us, 3),
                   "default_TFLOPs": round(flop / default_us / 1e6, 1),
                   "tuned_TFLOPs": round(flop / tuned_us / 1e6, 1),
                   "default_weight_GBps": round(n * k * 2 / default_us / 1e3, 1),
                   "rel_err": ((got - want).norm() / want.norm()).item()}
            results.append(row)
            print(f"M={m:5d} {name:8s} default {default_us:9.2f} us ({row['default_TFLOPs']:6.1f} TFLOP/s, "
                  f"{row['default_weight_GBps']:6.0f} GB/s) tuned {tuned_us:9.2f} us x{row['speedup']:.3f}",
                  flush=True)
            del ws, w0
    with open(args.json, "w") as f:
        json.dump({"results": results, "seconds": time.time() - t0, "device": torch.cuda.get_device_name(),
                   "torch": torch.__version__, "tuned": [list(r) for r in tunable.get_results()]}, f, indent=1)
    if hasattr(tunable, "write_file"):  # older torch; newer ones write the CSV as they tune
        tunable.write_file()
    return 0


if __name__ == "__main__":
    sys.exit(main())
