"""The GEMVs at batch 1: stream-K launches (STREAM_K programs per SM, each streaming an
equal run of the tiles' K steps) against the split-K candidates the autotuner had before.

Per 8B layer shape, fp8 W8A8 and bf16: every split-K candidate of mma_gemv.TC_GEMV_CONFIGS_*
(without STREAM_K) is timed and the best kept (what the autotuner would pick), then each stream-K
variant. With --flat, also each variant of FLAT_VARIANTS as one loop over a program's units
(mma_gemv._tc_stream_k_flat), which keeps copies in flight across a tile change.
int4: the FMA GEMV (quant_matmul.launch), its base and named-split candidates against stream-K
variants.
Timing is bench_kernels' (median of CUDA-graph replays, rotating weight sets so one timing moves
> 200 MB); each launch is checked against the reference first. GB/s counts the weights once.

    PYTHONPATH=. python3 benchmarks/kernels/bench_stream_k.py --json OUT.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import bench_quant  # noqa: E402
import sweep_gemv  # noqa: E402
from kiln.kernels import fma_gemv, mma_gemv  # noqa: E402

# (BLOCK_N, BLOCK_K, warps, stages, programs per SM) tried per scheme. Shared memory per program:
# bf16 64 x 128 x 4 stages 80 KB (2 fit on an SM), 64 x 64 40 KB; fp8 64 x 128 40 KB.
# int4 (FMA GEMV, quant_matmul.launch): (BLOCK_N, warps, UNROLL, stages, programs per SM);
# registers allow about 7 programs per SM at BLOCK_N 64 and 5 at 128 on 4 warps.
INT4_VARIANTS = [(64, 4, 1, 3, 4), (64, 4, 1, 3, 6), (128, 4, 1, 3, 3), (128, 4, 1, 3, 4),
                 (32, 2, 1, 3, 8), (256, 8, 1, 3, 2)]
VARIANTS = {"bf16-tc": [(64, 128, 4, 4, 1), (64, 128, 4, 4, 2), (64, 64, 4, 4, 2), (64, 64, 4, 4, 4),
                        (64, 64, 4, 6, 3), (128, 64, 4, 4, 2)],
            "fp8-tc": [(64, 128, 4, 4, 2), (64, 128, 4, 4, 3), (64, 128, 4, 4, 4), (64, 256, 4, 4, 2),
                       (128, 128, 4, 3, 2)]}
# The flat loop's variants (--flat): as VARIANTS, plus deeper rings, which one loop can keep full
# (bf16 64 x 128 at 6 stages: 122 KB, one program per SM; compile_sm90.py "flat").
FLAT_VARIANTS = {"bf16-tc": VARIANTS["bf16-tc"] + [(64, 128, 4, 6, 1), (64, 64, 4, 8, 2),
                                                   (64, 64, 4, 6, 2)],
                 "fp8-tc": VARIANTS["fp8-tc"] + [(64, 128, 4, 6, 2), (64, 128, 4, 8, 1),
                                                 (64, 256, 4, 4, 1)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--schemes", default="bf16-tc,fp8-tc,int4")
    ap.add_argument("--shapes", default=",".join(bench_quant.SHAPES))
    ap.add_argument("--flat", action="store_true",
                    help="also time the flat stream-K loop (FLAT) at FLAT_VARIANTS")
    args = ap.parse_args()
    ceil = bench_quant.ceilings()
    print(f"copy {ceil['copy_GBps']:.0f} GB/s", flush=True)
    results = []
    t0 = time.time()
    for scheme in args.schemes.split(","):
        wscheme = scheme[:-3] if scheme.endswith("-tc") else scheme
        if scheme == "int4":  # every base and named-split candidate
            kind = fma_gemv.GEMV_BASE_CONFIGS + fma_gemv.GEMV_SPLIT_CONFIGS
        else:
            kind = (mma_gemv.TC_GEMV_CONFIGS_FP8 if wscheme == "fp8"
                    else mma_gemv.TC_GEMV_CONFIGS_FLOAT)
        for name in args.shapes.split(","):
            n, k = sweep_gemv.SHAPES[name]
            probe = bench_quant.make_weights(wscheme, n, k)
            nbytes = bench_quant.weight_bytes(probe)
            sets = [probe] + [bench_quant.make_weights(wscheme, n, k)
                              for _ in range(bench_quant.n_sets(nbytes) - 1)]
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            want = sweep_gemv.reference(scheme, x, probe).float()
            rows = []
            cands = [("split", c) for c in kind if not c.kwargs.get("STREAM_K")]
            if scheme == "int4":
                cands += [("stream-K", triton.Config({"BLOCK_N": bn, "UNROLL": u, "STREAM_K": sk},
                                                     num_warps=w, num_stages=st))
                          for bn, w, u, st, sk in INT4_VARIANTS]
            else:
                cands += [("stream-K", triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "STREAM_K": sk},
                                                     num_warps=w, num_stages=st))
                          for bn, bk, w, st, sk in VARIANTS[scheme]]
                if args.flat:
                    cands += [("stream-K flat",
                               triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "STREAM_K": sk,
                                              "FLAT": True}, num_warps=w, num_stages=st))
                              for bn, bk, w, st, sk in FLAT_VARIANTS[scheme]]
            for family, cfg in cands:
                fn = sweep_gemv.runner(scheme, x, cfg, 0)
                err = ((fn(probe).float() - want).norm() / want.norm()).item()
                us = sweep_gemv.time_fn(fn, sets)
                rows.append({"family": family, "config": dict(cfg.kwargs), "num_warps": cfg.num_warps,
                             "num_stages": cfg.num_stages, "us": round(us, 2),
                             "GBps": round(nbytes / us / 1e3, 1), "rel_err": err})
            best = {f: min((r for r in rows if r["family"] == f), key=lambda r: r["us"])
                    for f in ("split", "stream-K", "stream-K flat")
                    if any(r["family"] == f for r in rows)}
            results.append({"scheme": scheme, "shape": name, "N": n, "K": k, "bytes": nbytes,
                            "rows": rows, "best": best})
            print(f"{scheme:7s} {name:8s} split-K best {best['split']['us']:7.2f} us "
                  f"({best['split']['GBps']:5.0f} GB/s) | stream-K best {best['stream-K']['us']:7.2f} us "
                  f"({best['stream-K']['GBps']:5.0f} GB/s) {best['stream-K']['config']} "
                  f"w{best['stream-K']['num_warps']} s{best['stream-K']['num_stages']} | max rel_err "
                  f"{max(r['rel_err'] for r in rows):.1e}", flush=True)
            if "stream-K flat" in best:
                flat = best["stream-K flat"]
                print(f"{'':16s} stream-K flat best {flat['us']:7.2f} us ({flat['GBps']:5.0f} GB/s) "
                      f"{flat['config']} w{flat['num_warps']} s{flat['num_stages']}", flush=True)
            sweep_gemv.write_results(args.json, ceil, results, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
