"""GEMM time against the row count: which decode batch sizes the linear layers run efficiently at.

A decode CUDA graph runs its bucket's row count, padded. cuBLAS (and torch._scaled_mm for fp8)
picks a kernel per shape, and some row counts get a kernel that wastes a wave: a larger bucket can
then be faster than a smaller one. This times the step's GEMMs of Llama-3-8B (qkv, o, gate_up,
down, lm_head), bf16 and fp8 row-wise, at every row count of a list, summed per decode step
(32 layers plus the head), and reports for each M the time and the fastest bucket at or above it.

fp8 schemes: `fp8` (row-wise scales, the engine's call), `fp8fast` (the same with
use_fast_accum: the tensor cores' own fp8 accumulation, no periodic promotion to float32),
`fp8tw` / `fp8twfast` (one scale per tensor: cuBLASLt's path), and `fp8head*` (the same as `fp8` /
`fp8fast` with the lm_head in fp8 too). Each fp8 scheme also reports its error against a float32
product of the same codes (max and mean relative to the output's RMS).

    PYTHONPATH=. python3 benchmarks/kernels/bench_gemm_rows.py --rows 256:1024:16 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench_kernels  # noqa: E402

LAYERS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}
NUM_LAYERS = 32


def parse_rows(spec: str) -> list[int]:
    """'256:1024:16' (start:stop:step, stop included) or '1000,1008,1024'."""
    if ":" in spec:
        a, b, s = (int(v) for v in spec.split(":"))
        return list(range(a, b + 1, s))
    return [int(v) for v in spec.split(",")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="256:1024:16")
    ap.add_argument("--schemes", default="bf16,fp8")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    rows = parse_rows(args.rows)
    dev = torch.device("cuda")
    out = {"rows": rows, "layers": LAYERS, "results": {}}
    for scheme in args.schemes.split(","):
        weights = {}
        for name, (n, k) in LAYERS.items():
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
            fp8 = scheme.startswith("fp8") and (name != "lm_head" or scheme.startswith("fp8head"))
            if fp8:  # the fp8 engine keeps a bf16 head unless built with --lm-head-quant fp8
                ws = (torch.ones((), device=dev) if scheme.startswith("fp8tw")
                      else torch.rand(1, n, device=dev, dtype=torch.float32) + 0.5)
                weights[name] = (w.to(torch.float8_e4m3fn), ws)
            else:
                weights[name] = (w, None)
        per_m = []
        for m in rows:
            x = torch.randn(m, 4096, device=dev, dtype=torch.bfloat16)
            x14 = torch.randn(m, 14336, device=dev, dtype=torch.bfloat16)
            xq, xq14 = x.to(torch.float8_e4m3fn), x14.to(torch.float8_e4m3fn)
            sx = (torch.ones((), device=dev) if scheme.startswith("fp8tw")
                  else torch.rand(m, 1, device=dev, dtype=torch.float32) + 0.5)
            fast = scheme.endswith("fast")
            row = {"m": m}
            total = 0.0
            for name, (w, ws) in weights.items():
                big = name == "down"
                if ws is None:
                    a = x14 if big else x
                    call = lambda a=a, w=w: torch.nn.functional.linear(a, w)  # noqa: E731
                else:
                    a = xq14 if big else xq
                    call = lambda a=a, w=w, ws=ws: torch._scaled_mm(  # noqa: E731
                        a, w.t(), scale_a=sx, scale_b=ws, out_dtype=torch.bfloat16,
                        use_fast_accum=fast)
                    if m == rows[0]:  # error of this call against float32 products of the codes
                        ref = (a.float() @ w.float().t()) * sx * ws
                        err = (call().float() - ref).abs() / ref.pow(2).mean().sqrt()
                        row.setdefault("rel_err", {})[name] = {"max": err.max().item(),
                                                               "mean": err.mean().item()}
                us = bench_kernels.time_calls([call], reps=args.reps)
                n, k = LAYERS[name]
                row[name] = {"us": us, "tflops": 2 * m * n * k / us / 1e6}
                total += us * (1 if name == "lm_head" else NUM_LAYERS)
            row["step_us"] = total
            per_m.append(row)
            print(f"{scheme} M={m:5d} step {total / 1e3:7.3f} ms  " + "  ".join(
                f"{name} {row[name]['us']:7.1f}us {row[name]['tflops']:4.0f}T" for name in LAYERS),
                flush=True)
        # For each M: the fastest bucket at or above it (padding allowed), and its gain.
        for i, row in enumerate(per_m):
            best = min(per_m[i:], key=lambda r: r["step_us"])
            row["best_bucket"] = best["m"]
            row["best_step_us"] = best["step_us"]
        out["results"][scheme] = per_m
        if "rel_err" in per_m[0]:
            print(f"{scheme}: error / output RMS at M={rows[0]}: " + "  ".join(
                f"{k} max {v['max']:.2e} mean {v['mean']:.2e}" for k, v in per_m[0]["rel_err"].items()))
        slow = [(r["m"], r["best_bucket"], round(r["step_us"] / r["best_step_us"], 3))
                for r in per_m if r["best_bucket"] != r["m"]]
        print(f"{scheme}: row counts where a larger bucket is faster (M, bucket, ratio): {slow}")
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
