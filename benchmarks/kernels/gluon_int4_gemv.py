"""Prototype, not used by kiln and not yet run on a GPU: the int4 double-word GEMV (one bf16 row,
group 128) written in Gluon, Triton's explicit-layout dialect, to time against kiln's Triton
GEMV (`fma_gemv._gemv_kernel`, INT4_ASM 4) on the H200.

Why: in the Triton kernel each K group's scales go through shared memory (two barriers per
group in the sm_90 SASS: the compiler's layout for the scale vector differs from the one the
weight tile needs), and it takes 96 registers. Here every layout is chosen: a thread holds ROWS
rows x COLS double words, the scales load in the tile's row slice and x in its column slice, so
nothing passes through shared memory (compiled for sm_90 on the CPU: 0 shared-memory
instructions, 64 registers at 4 x 2 on 4 warps, 352 loop instructions per 128 weights per
thread against 358). PREFETCH carries the next group's words and scales in registers.
The product is kiln's own PTX (`int4_bits._INT4_DWORD_DOT_ASM`, `int4_bits._X_PAIRS_BF16_ASM`), and
the K
splits are summed as kiln's GEMV sums them (the last program of each output tile adds the
float32 partials in split order), so the race is like for like.

    PYTHONPATH=. python3 benchmarks/kernels/gluon_int4_gemv.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

sys.path.insert(0, os.path.dirname(__file__))
import bench_quant  # noqa: E402
from kiln.kernels import quant_matmul as qm  # noqa: E402
from kiln.kernels import int4_bits  # noqa: E402
from kiln.kernels.quant_ref import int4_wo_linear_ref  # noqa: E402

DOT_ASM = gl.constexpr(int4_bits._INT4_DWORD_DOT_ASM.value)
PAIRS_ASM = gl.constexpr(int4_bits._X_PAIRS_BF16_ASM.value)
# (ROWS, COLS, WARPS) per thread / per CTA, and the K splits tried
TILES = [(2, 2, 4), (4, 2, 4), (8, 2, 4), (4, 4, 4), (4, 2, 8), (8, 2, 8)]
SPLITS = [1, 2, 4, 8, 16]
# kiln's GEMV at the best (BLOCK_N, warps, UNROLL, split) per layer of this session's sweep
# (benchmarks/kernels/sweep_gemv_int4_f16_h200.json)
KILN_BEST = {"qkv": (64, 4, 1, 8), "o": (128, 4, 1, 16), "gate_up": (64, 4, 1, 2),
             "down": (128, 4, 1, 16)}


@gluon.jit
def _pairs(x, mask):
    a = gl.load(x, mask=mask, other=0)
    b = gl.load(x + 1, mask=mask, other=0)
    c = gl.load(x + 2, mask=mask, other=0)
    d = gl.load(x + 3, mask=mask, other=0)
    return gl.inline_asm_elementwise(PAIRS_ASM, "=r,=r,=r,=r,r,r,r,r", [a, b, c, d],
                                     dtype=(gl.int32,) * 4, is_pure=True, pack=1)


@gluon.jit
def int4_gemv_gluon(x_ptr, w_ptr, s_ptr, part_ptr, out_ptr, lock_ptr, N, K, stride_wn, stride_sn,
                    SPLIT_K: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr,
                    WARPS: gl.constexpr, PREFETCH: gl.constexpr):
    GROUP: gl.constexpr = 128
    DW: gl.constexpr = GROUP // 16          # double words per row per group
    TK: gl.constexpr = DW // COLS           # threads along K
    TN: gl.constexpr = 32 // TK             # threads along N per warp
    BLOCK_N: gl.constexpr = ROWS * TN * WARPS
    L: gl.constexpr = gl.BlockedLayout([ROWS, COLS], [TN, TK], [WARPS, 1], [1, 0])
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L))
    offs_c = gl.arange(0, DW, layout=gl.SliceLayout(0, L))
    n_mask = offs_n < N
    groups = K // GROUP
    per = gl.cdiv(groups, SPLIT_K)
    g_begin = pid_k * per
    g_end = gl.minimum(g_begin + per, groups)
    rows = (w_ptr.to(gl.pointer_type(gl.int64)) + offs_n.to(gl.int64)[:, None] * (stride_wn // 8)
            + offs_c[None, :])
    s_rows = s_ptr + offs_n.to(gl.int64) * stride_sn
    xw = x_ptr.to(gl.pointer_type(gl.int32))
    acc = gl.zeros([BLOCK_N, DW], gl.float32, layout=L)
    if PREFETCH:
        nxt = gl.load(rows + g_begin * DW, mask=n_mask[:, None] & (g_begin < g_end), other=0)
        s_nxt = gl.load(s_rows + g_begin, mask=n_mask & (g_begin < g_end), other=0.0)
    for g in range(g_begin, g_end):
        if PREFETCH:
            dword = nxt
            s = s_nxt
            nxt = gl.load(rows + (g + 1) * DW, mask=n_mask[:, None] & (g + 1 < g_end), other=0)
            s_nxt = gl.load(s_rows + g + 1, mask=n_mask & (g + 1 < g_end), other=0.0)
        else:
            dword = gl.load(rows + g * DW, mask=n_mask[:, None], other=0)
            s = gl.load(s_rows + g, mask=n_mask, other=0.0)
        xr = xw + 8 * (g * DW + offs_c)
        xm = offs_c < DW
        p0, p1, p2, p3 = _pairs(xr, xm)
        p4, p5, p6, p7 = _pairs(xr + 4, xm)
        dots = gl.inline_asm_elementwise(DOT_ASM, "=r,l,r,r,r,r,r,r,r,r",
                                         [dword, p0[None, :], p1[None, :], p2[None, :], p3[None, :],
                                          p4[None, :], p5[None, :], p6[None, :], p7[None, :]],
                                         dtype=gl.float32, is_pure=True, pack=1)
        acc += dots * s[:, None]
    out = gl.sum(acc, axis=1)
    if SPLIT_K == 1:
        gl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:  # kiln's fused split-K: the tile's last program sums the partials in split order
        gl.store(part_ptr + pid_k * N + offs_n, out, mask=n_mask)
        gl.thread_barrier()
        arrived = gl.atomic_add(lock_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            gl.thread_barrier()
            total = gl.zeros_like(out)
            for sk in range(0, SPLIT_K):
                total += gl.load(part_ptr + sk * N + offs_n, mask=n_mask, other=0.0,
                                 cache_modifier=".cg")
            gl.store(out_ptr + offs_n, total.to(out_ptr.dtype.element_ty), mask=n_mask)
            gl.atomic_xchg(lock_ptr + pid_n, 0, sem="relaxed", scope="gpu")


def block_n(rows: int, cols: int, warps: int) -> int:
    return rows * (32 // (8 // cols)) * warps


def launch(x, qweight, scales, part, out, locks, split, rows, cols, warps, prefetch):
    """One launch: out [N] (x's dtype) = x [1, K] @ dequant(qweight, scales).T, split over K with
    kiln's fused reduce (part: [split, N] float32 partials; locks: zeroed int32 counters, one per
    output tile, re-armed by the kernel)."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    int4_gemv_gluon[(triton.cdiv(n, block_n(rows, cols, warps)), split)](
        x, qweight, scales, part, out, locks, n, k, qweight.stride(0), scales.stride(0),
        SPLIT_K=split, ROWS=rows, COLS=cols, WARPS=warps, PREFETCH=prefetch, num_warps=warps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    results = []
    t0 = time.time()
    for name, (n, k) in bench_quant.SHAPES.items():
        probe = bench_quant.make_weights("int4", n, k)
        nbytes = bench_quant.weight_bytes(probe)
        sets = [probe] + [bench_quant.make_weights("int4", n, k)
                          for _ in range(bench_quant.n_sets(nbytes) - 1)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        want = int4_wo_linear_ref(x, probe[0], probe[1], 128).float()[0]
        locks = torch.zeros(n, dtype=torch.int32, device="cuda")
        row = {"shape": name, "N": n, "K": k, "bytes": nbytes, "gluon": []}
        bn, warps, unroll, split = KILN_BEST[name]
        cfg = triton.Config({"BLOCK_N": bn, "UNROLL": unroll}, num_warps=warps, num_stages=3)

        def kiln(w, cfg=cfg, split=split):
            return qm.launch(x, w[0], w[1], w[1].stride(1), 128, qm.W_INT4, None, x.dtype, "gemv",
                             split_k=split, config=cfg)

        row["kiln_best_us"] = round(bench_quant.time_calls([lambda w=w: kiln(w) for w in sets]), 2)
        for rows, cols, warps in TILES:
            for prefetch in (False, True):
                for split in SPLITS:
                    part = torch.empty(split, n, dtype=torch.float32, device="cuda")
                    out = torch.empty(n, dtype=x.dtype, device="cuda")
                    launch(x, probe[0], probe[1], part, out, locks, split, rows, cols, warps, prefetch)
                    err = ((out.float() - want).norm() / want.norm()).item()
                    us = bench_quant.time_calls([lambda w=w: launch(x, w[0], w[1], part, out, locks,
                                                                    split, rows, cols, warps, prefetch)
                                                 for w in sets])
                    row["gluon"].append({"rows": rows, "cols": cols, "warps": warps,
                                         "prefetch": prefetch, "split": split, "us": round(us, 2),
                                         "rel_err": err})
        best = min(row["gluon"], key=lambda r: r["us"])
        row["gluon_best"] = best
        results.append(row)
        print(f"{name:8s} kiln best {row['kiln_best_us']:7.2f} us | gluon best {best['us']:7.2f} us "
              f"(rows {best['rows']} cols {best['cols']} w{best['warps']} prefetch {best['prefetch']} "
              f"split {best['split']}; max rel_err {max(r['rel_err'] for r in row['gluon']):.1e})",
              flush=True)
        with open(args.json, "w") as f:
            json.dump({"results": results, "seconds": time.time() - t0,
                       "device": torch.cuda.get_device_name()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
