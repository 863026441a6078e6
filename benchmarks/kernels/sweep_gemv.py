"""Sweep the GEMV's launch settings (tile width, warps, unroll, K splits) at batch-1 decode shapes.

For int4 weight-only (group 128), int8 weight-only (per channel; scheme int8), fp8 W8A8 and
unquantized bf16 weights at the Llama-3-8B layer
shapes, every (config, split) pair is timed at M = 1 (median of CUDA-graph replays, rotating
weight sets so one timing moves > 200 MB), with the config the autotuner picks and cuBLAS (bf16)
as the same-run baselines. Bytes are the weights and scales once; GB/s is over the copy
bandwidth measured in the same run. Each timed config is checked against its reference.

    PYTHONPATH=. python3 benchmarks/kernels/sweep_gemv.py --json OUT.json [--schemes int4,fp8]
        [--shapes qkv,o,gate_up,down,lm_head] [--autotuned-only] [--int4-row-block LB]

``--int4-row-block LB`` stores the int4 weights in blocks of LB rows (int4_bits.tile_int4_rows, what
KILN_INT4_ROW_BLOCK does to an engine's layers at load) and times the FMA GEMV on them; the
autotuned row then tunes on the blocked weights too. ``--int4-scales-kn`` stores the int4 group
scales K-group-major ([K / 128, N], read through a transposed view: the kernel takes any scale
strides), so that a program's scales of one group are contiguous instead of a row stride apart.

Schemes ``fp8-tc`` and ``bf16-tc`` sweep the tensor-core GEMV (mma_gemv.tc_gemv: TC_GEMV_TILES,
every split; UNROLL in the rows holds its BLOCK_K) beside the FMA GEMV's autotuned choice (and
cuBLAS for bf16). Scheme ``int4-tc`` sweeps the tensor-core int4 kernel (mma_gemv.int4_tc_gemv:
BLOCK_N and warps of TC_TILES, every split) on the same int4 weights, beside the FMA GEMV's
autotuned choice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import bench_kernels  # noqa: E402
import bench_quant  # noqa: E402
from kiln.kernels import quant_matmul as qm  # noqa: E402
from kiln.kernels import int4_bits, mma_gemv  # noqa: E402
from kiln.kernels.quant_ref import (fp8_linear_ref, int4_wo_linear_ref,  # noqa: E402
                                    int8_wo_linear_ref)
from kiln.kernels.quant_act import quant_per_token  # noqa: E402

# (BLOCK_N, num_warps, UNROLL): the candidates swept, a superset of fma_gemv.GEMV_CONFIGS' shapes.
TILES = [(16, 2, 1), (32, 2, 1), (32, 4, 1), (32, 4, 2), (64, 4, 1), (64, 4, 2), (64, 8, 1),
         (128, 4, 1), (128, 8, 1), (256, 4, 1), (256, 8, 1)]
SPLITS = [1, 2, 4, 8, 16]
# (BLOCK_N, num_warps) of the tensor-core int4 kernel: 4 warps and BLOCK_N >= 64 give wgmma,
# fewer warps mma.sync.
TC_TILES = [(32, 2), (64, 2), (64, 4), (128, 4), (128, 8)]
# The layer shapes, plus the LM head (128256 x 4096) for `--shapes lm_head`.
SHAPES = {**bench_quant.SHAPES, "lm_head": bench_quant.LM_HEAD}
ROW_BLOCK = 1  # --int4-row-block: int4 weights stored in blocks of this many rows
SCALES_KN = False  # --int4-scales-kn: int4 scales stored [K / group, N]


# (BLOCK_N, BLOCK_K, num_warps, num_stages) of the tensor-core GEMV (mma_gemv.tc_gemv), fp8 and
# bf16.
TC_GEMV_TILES = {"fp8-tc": [(64, 128, 4, 4), (64, 256, 4, 4), (64, 128, 4, 6), (128, 128, 4, 3),
                            (128, 256, 4, 3)],
                 "bf16-tc": [(64, 64, 4, 4), (64, 128, 4, 4), (64, 64, 4, 6), (128, 64, 4, 4),
                             (128, 128, 4, 3)]}
# --tc-long-k adds these: few rows a program, each read in runs of 512 to 1,024 bytes a step (the
# rows' run length, not the tile's area, may set how well a GEMV streams:
# probe_weight_stream.py). They compile for sm_90 without spills (mma.sync, 48-96 KB shared).
TC_GEMV_LONG_K = {"fp8-tc": [(16, 512, 4, 4), (16, 1024, 4, 4), (32, 512, 4, 4), (32, 1024, 4, 3),
                             (16, 1024, 2, 4)],
                  "bf16-tc": [(16, 256, 4, 4), (16, 512, 4, 4), (32, 256, 4, 4), (32, 512, 4, 3),
                              (16, 512, 2, 4)]}


def runner(scheme: str, x: torch.Tensor, config: triton.Config | None, split: int):
    """fn(weights) running one launch of the scheme's GEMV with a fixed config and split."""
    if scheme in TC_GEMV_TILES:
        base = scheme[:-3]
        if config is None:  # the baseline: the FMA GEMV as the dispatcher runs it
            return runner(base, x, None, split)
        if base == "fp8":
            def f(w):
                xq, sx = quant_per_token(x, torch.float8_e4m3fn)
                return mma_gemv.tc_gemv(xq, sx, w[0], w[1], None, x.dtype, split_k=split,
                                        config=config)
            return f
        return lambda w: mma_gemv.tc_gemv(x, None, w[0], None, None, x.dtype, split_k=split,
                                          config=config)
    if scheme == "int4-tc":
        if config is None:  # the baseline: the FMA GEMV as the dispatcher runs it
            return runner("int4", x, None, split)
        return lambda w: mma_gemv.int4_tc_gemv(x, w[0], w[1], bench_quant.GROUP, None, x.dtype,
                                               split_k=split, block_n=config.kwargs["BLOCK_N"],
                                               num_warps=config.num_warps)
    if scheme == "int4":
        return lambda w: qm.launch(x, w[0], w[1], w[1].stride(1), bench_quant.GROUP, qm.W_INT4, None,
                                   x.dtype, "gemv", split_k=split, config=config,
                                   row_block=ROW_BLOCK)
    if scheme == "int8":  # weight-only, per-channel scales (as int8_wo_linear launches it)
        return lambda w: qm.launch(x, w[0].view(torch.uint8), w[1], 0, qm.KTILE_8BIT, qm.W_INT8_U,
                                   None, x.dtype, "gemv", split_k=split, config=config)
    if scheme == "fp8":
        def f(w):
            xq, sx = quant_per_token(x, torch.float8_e4m3fn)
            return qm.launch(xq, w[0], w[1], 0, qm.KTILE_8BIT, qm.W_FP8, None, x.dtype, "gemv",
                             x_scales=sx, split_k=split, config=config)
        return f
    return lambda w: qm.launch(x, w[0], w[0], 0, qm.KTILE_8BIT, qm.W_FLOAT, None, x.dtype, "gemv",
                               split_k=split, config=config)


def reference(scheme: str, x: torch.Tensor, w: tuple) -> torch.Tensor:
    if scheme in ("int4", "int4-tc"):
        return int4_wo_linear_ref(x, w[0], w[1], bench_quant.GROUP)
    if scheme in ("fp8", "fp8-tc"):
        return fp8_linear_ref(x, w[0], w[1])
    if scheme == "int8":
        return int8_wo_linear_ref(x, w[0], w[1])
    return (x.float() @ w[0].float().T).to(x.dtype)


def time_fn(fn, sets: list[tuple]) -> float:
    return bench_kernels.time_calls([lambda w=w: fn(w) for w in sets], reps=20)


def sweep_shape(scheme: str, name: str, n: int, k: int, copy_gbps: float,
                verbose: bool = False, autotuned_only: bool = False) -> dict:
    wscheme = scheme[:-3] if scheme.endswith("-tc") else scheme
    probe = bench_quant.make_weights(wscheme, n, k)
    nbytes = bench_quant.weight_bytes(probe)
    sets = [probe] + [bench_quant.make_weights(wscheme, n, k) for _ in range(bench_quant.n_sets(nbytes) - 1)]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    want = reference(scheme, x, probe).float()
    if scheme == "int4" and ROW_BLOCK > 1:  # timed and checked on the blocked layout
        sets = [(int4_bits.tile_int4_rows(w[0], ROW_BLOCK, bench_quant.GROUP),
                 *w[1:]) for w in sets]
        probe = sets[0]
    if scheme == "int4" and SCALES_KN:  # [N, G] views of [G, N] scales (strides 1, N)
        sets = [(w[0], w[1].t().contiguous().t()) for w in sets]
        probe = sets[0]
    rows = []
    if scheme in TC_GEMV_TILES:
        tiles = [(b, w, bk, stages) for b, bk, w, stages in TC_GEMV_TILES[scheme]]
    elif scheme == "int4-tc":
        tiles = [(b, w, 1, 3) for b, w in TC_TILES]
    else:
        tiles = [(b, w, u, 3) for b, w, u in TILES]
    for block_n, warps, unroll, stages in ([] if autotuned_only else tiles):
        # (the tensor-core GEMV's K tile rides in the UNROLL column of the rows)
        kw = {"BLOCK_N": block_n, "BLOCK_K" if scheme in TC_GEMV_TILES else "UNROLL": unroll}
        cfg = triton.Config(kw, num_warps=warps, num_stages=stages)
        step = unroll if scheme in TC_GEMV_TILES else (
            bench_quant.GROUP if wscheme == "int4" else qm.KTILE_8BIT)
        groups = triton.cdiv(k, step)
        for split in SPLITS:
            if split > groups:
                continue
            fn = runner(scheme, x, cfg, split)
            got = fn(probe)
            err = ((got.float() - want).norm() / want.norm()).item()
            us = time_fn(fn, sets)
            rows.append({"BLOCK_N": block_n, "num_warps": warps, "UNROLL": unroll, "split": split,
                         "num_stages": stages,
                         "us": round(us, 2), "GBps": round(nbytes / us / 1e3, 1), "rel_err": err})
            if verbose:
                print(f"  {name} BN{block_n} w{warps} U{unroll} split{split}: {us:7.2f} us "
                      f"rel_err {err:.1e}", flush=True)
    best = min(rows, key=lambda r: r["us"]) if rows else None
    out = {"scheme": scheme, "shape": name, "N": n, "K": k, "bytes": nbytes, "rows": rows, "best": best,
           "int4_row_block": ROW_BLOCK if scheme == "int4" else 1,
           "int4_scales_kn": SCALES_KN and scheme == "int4"}
    # The dispatcher's own choice (autotuned, heuristic split) and, for bf16, cuBLAS.
    tuned = runner(scheme, x, None, 0)
    tuned(probe)
    out["autotuned_us"] = round(time_fn(tuned, sets), 2)
    if scheme in TC_GEMV_TILES:  # the tensor-core GEMV as its own autotuner picks
        auto = (lambda w: mma_gemv.tc_gemv(*quant_per_token(x, torch.float8_e4m3fn), w[0], w[1],
                                           None, x.dtype)) if wscheme == "fp8" else (
            lambda w: mma_gemv.tc_gemv(x, None, w[0], None, None, x.dtype))
        auto(probe)
        out["tc_autotuned_us"] = round(time_fn(auto, sets), 2)
    if wscheme == "bf16":
        out["cublas_us"] = round(time_fn(lambda w: x @ w[0].T, sets), 2)
    print(f"{scheme:5s} {name:8s}", end=" ")
    if best is not None:
        print(f"best {best['us']:7.2f} us ({best['GBps']:6.0f} GB/s, "
              f"{100 * best['GBps'] / copy_gbps:3.0f}% copy) BN{best['BLOCK_N']} "
              f"w{best['num_warps']} U{best['UNROLL']} split{best['split']}", end=" ")
    print(f"| autotuned {out['autotuned_us']:7.2f} us "
          f"({nbytes / out['autotuned_us'] / 1e3:6.0f} GB/s)"
          + (f" | tc autotuned {out['tc_autotuned_us']:7.2f} us" if "tc_autotuned_us" in out else "")
          + (f" | cuBLAS {out['cublas_us']:7.2f} us" if "cublas_us" in out else ""), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--schemes", default="int4,fp8,bf16")
    ap.add_argument("--shapes", default=",".join(bench_quant.SHAPES),
                    help=f"comma-separated, of {', '.join(SHAPES)} (lm_head: not by default)")
    ap.add_argument("--verbose", action="store_true", help="print every timed config")
    ap.add_argument("--autotuned-only", action="store_true",
                    help="time only the dispatcher's autotuned choice (no grid)")
    ap.add_argument("--tc-long-k", action="store_true",
                    help="add the tensor-core GEMV's few-row, long-K tiles (TC_GEMV_LONG_K)")
    ap.add_argument("--int4-row-block", type=int, default=1,
                    help="int4 weights stored in blocks of this many rows "
                         "(int4_bits.tile_int4_rows)")
    ap.add_argument("--int4-scales-kn", action="store_true",
                    help="int4 scales stored [K / group, N] (a transposed view)")
    args = ap.parse_args()
    global ROW_BLOCK, SCALES_KN
    ROW_BLOCK = args.int4_row_block
    SCALES_KN = args.int4_scales_kn
    if args.tc_long_k:
        for scheme, tiles in TC_GEMV_LONG_K.items():
            TC_GEMV_TILES[scheme] = TC_GEMV_TILES[scheme] + tiles
    ceil = bench_quant.ceilings()
    print(f"copy {ceil['copy_GBps']:.0f} GB/s, bf16 matmul {ceil['matmul_bf16_TFLOPs']:.0f} TFLOP/s")
    results = []
    t0 = time.time()
    for scheme in args.schemes.split(","):
        for name in args.shapes.split(","):
            n, k = SHAPES[name]
            results.append(sweep_shape(scheme, name, n, k, ceil["copy_GBps"], args.verbose,
                                       args.autotuned_only))
            # Written after every shape, so a run cut short keeps what it measured.
            write_results(args.json, ceil, results, t0)
    return 0


def write_results(path: str, ceil: dict, results: list, t0: float) -> None:
    """The sweep's JSON: ceilings, results so far, seconds since t0, device and versions."""
    with open(path, "w") as f:
        json.dump({"ceilings": ceil, "results": results, "seconds": time.time() - t0,
                   "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "triton": triton.__version__}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
