"""Decode rows on the tensor cores, operands swapped so the weights stream through shared memory
untouched: the GEMV of fp8 W8A8 and unquantized bfloat16/float16 weights (_tc_gemv_kernel, the
default for up to SMALL_M rows; KILN_TC_GEMV), with its candidates and autotuner, and the int4
weight-only product (_int4_tc_gemv_kernel, KILN_INT4_TC, off)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args
from kiln.kernels.int4_bits import _int4_words_16
from kiln.kernels.pdl import pdl_start
from kiln.kernels.qmm_common import (MAX_SPLIT_K, SMALL_M, SPLIT_LOCKS, _cfg, _few_rows_tile,
                                     _finish_tile, _num_sms, _partials, _prefetch_budget,
                                     _prefetch_rows, _reduce_splits, _run, _split_range,
                                     _stream_k_contributor, _stream_k_run, autotune_enabled,
                                     fused_splitk_enabled, pick_split_k, prefetch_steps, split_for,
                                     split_locks, stream_k_grid)


@triton.jit
def _tc_gemv_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                    M, N, K, stride_xm, stride_wn, stride_om, num_sms, split_hint,
                    A8: tl.constexpr, HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr,
                    BLOCK_M: tl.constexpr, SPLIT_K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    split_cfg=0, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
                    PREFETCH_MB: tl.constexpr = 0, STREAM_K: tl.constexpr = 0,
                    EARLY_W: tl.constexpr = 0, FLAT: tl.constexpr = False):
    # A few rows (M <= BLOCK_M = 16) times fp8 (W8A8: fp8 codes of x, per-token scales xs and
    # per-channel weight scales ws) or float16/bfloat16 weights [N, K] on the tensor cores,
    # operands swapped: out^T tile [BLOCK_N, BLOCK_M] = W tile [BLOCK_N, K] @ x^T [K, BLOCK_M], so
    # the weights, the bytes that matter, go from memory to shared memory to the tensor cores
    # untouched by the registers (no conversion, no FMAs), and x pads only the dot's narrow side.
    # Grid (N tiles, K splits); split_cfg as in _gemv_kernel (read by the heuristic only).
    # PREFETCH > 0 (CUDA, with PDL): before waiting for the kernel before, ask for the first
    # PREFETCH K steps of this program's weight rows in L2 (they do not depend on it); with
    # PREFETCH_MB > 0 at most that many MiB over the whole launch (_prefetch_budget).
    # STREAM_K > 0: grid (P, 1) instead, and the tiles' K steps, taken in order as one run of
    # units (tile by tile), are cut into P equal runs, one per program, so every program streams
    # the same number of weight bytes whatever the tile count (no partial last wave). A program
    # whose run covers part of a tile leaves a partial (_tc_stream_k_tiles). FLAT: the run as one
    # loop over its units instead of a K loop per tile (_tc_stream_k_flat).
    # EARLY_W 1, 2 or 4 (split-K grid, with PDL): the weight tiles of the first EARLY_W K steps are
    # loaded into registers before waiting for the kernel before (_tc_tile_acc).
    if STREAM_K > 0 and FLAT:
        pdl_start(PDL)
        _tc_stream_k_flat(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                          M, N, K, stride_xm, stride_wn, stride_om, A8, HAS_BIAS, FUSED_SPLITK,
                          BLOCK_M, BLOCK_N, BLOCK_K)
    elif STREAM_K > 0:
        pdl_start(PDL)
        _tc_stream_k_tiles(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                           M, N, K, stride_xm, stride_wn, stride_om, A8, HAS_BIAS, FUSED_SPLITK,
                           BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        pid_n, pid_k, offs_n, n_mask, rows, m_mask = _few_rows_tile(M, N, BLOCK_N, BLOCK_M)
        s_begin, s_end = _split_range(tl.cdiv(K, BLOCK_K), SPLIT_K, pid_k)
        if PREFETCH > 0:
            ELEM: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
            steps = _prefetch_budget(PREFETCH, PREFETCH_MB, BLOCK_N * BLOCK_K * ELEM)
            _prefetch_rows(w_ptr, offs_n, n_mask, stride_wn, s_begin * BLOCK_K,
                           tl.minimum(tl.minimum(s_end, s_begin + steps) * BLOCK_K, K), ELEM)
        acc = _tc_tile_acc(x_ptr, xs_ptr, w_ptr, ws_ptr, offs_n, n_mask, rows, m_mask, s_begin,
                           s_end, K, stride_xm, stride_wn, A8, BLOCK_M, BLOCK_N, BLOCK_K, PDL,
                           EARLY_W)
        _finish_tile(acc, rows[None, :], offs_n[:, None], n_mask[:, None] & m_mask[None, :],
                     out_ptr, part_ptr, lock_ptr, bias_ptr, pid_n, pid_k, M, N, stride_om, SPLIT_K,
                     HAS_BIAS, FUSED_SPLITK)


@triton.jit
def _tc_tile_acc(x_ptr, xs_ptr, w_ptr, ws_ptr, offs_n, n_mask, rows, m_mask, s_begin, s_end, K,
                 stride_xm, stride_wn, A8: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
                 EARLY_W: tl.constexpr = 0):
    """The tensor-core GEMV's float32 out^T tile [BLOCK_N, BLOCK_M] over K steps
    [s_begin, s_end) (fp8: times both scales). Waits for the kernel before (pdl_start) before
    its first read of x; with EARLY_W 1, 2 or 4 the weight tiles of the first EARLY_W steps (which
    no kernel writes) are loaded into registers before that wait, so that under PDL their reads
    overlap the end of the kernel before. The products are summed in the same order either way."""
    kk = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    x_cols = x_ptr + rows[None, :] * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    first = s_begin
    if EARLY_W > 0:
        # one [BLOCK_N, EARLY_W * BLOCK_K] load (two separate ones made ptxas wait for the first
        # before issuing the second); its K runs in order, as the steps' would
        ke = s_begin * BLOCK_K + tl.arange(0, EARLY_W * BLOCK_K)
        oke = ke < tl.minimum(s_end * BLOCK_K, K)
        we = tl.load(w_rows + ke[None, :], mask=n_mask[:, None] & oke[None, :], other=0.0)
        pdl_start(PDL)
        xe = tl.load(x_cols + ke[:, None], mask=m_mask[None, :] & oke[:, None], other=0.0)
        acc = tl.dot(we, xe, acc)
        first = tl.minimum(s_begin + EARLY_W, s_end)
    else:
        pdl_start(PDL)
    for step in range(first, s_end):
        offs_k = step * BLOCK_K + kk
        k_ok = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_ok[None, :], other=0.0)
        xt = tl.load(x_cols + offs_k[:, None], mask=m_mask[None, :] & k_ok[:, None], other=0.0)
        acc = tl.dot(w, xt, acc)
    if A8:
        sw = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
        sx = tl.load(xs_ptr + rows, mask=m_mask, other=0.0)
        acc = acc * sw[:, None] * sx[None, :]
    return acc


@triton.jit
def _tc_stream_k_tiles(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                       M, N, K, stride_xm, stride_wn, stride_om, A8: tl.constexpr,
                       HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One stream-K program of _tc_gemv_kernel: the units [p U / P, (p + 1) U / P) of the
    U = tiles x K steps, tile by tile. A tile's contributors are the programs whose runs meet
    it, numbered from 0 in program order; contributor c of a tile with C of them stores its
    partial as split c and the tile is finished as a C-way split (_finish_tile: with
    FUSED_SPLITK the last to arrive sums them in contributor order). Without FUSED_SPLITK every
    tile leaves partials, even a whole one (C is then taken as unbounded), for the caller to
    sum over the zero-filled buffer."""
    steps = tl.cdiv(K, BLOCK_K)
    p, P, units, u_begin, u_end = _stream_k_run(N, steps, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    m_mask = rows < M
    for tile in range(u_begin // steps, tl.cdiv(u_end, steps)):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        acc = _tc_tile_acc(x_ptr, xs_ptr, w_ptr, ws_ptr, offs_n, n_mask, rows, m_mask,
                           tl.maximum(u_begin, tile * steps) - tile * steps,
                           tl.minimum(u_end, (tile + 1) * steps) - tile * steps, K, stride_xm,
                           stride_wn, A8, BLOCK_M, BLOCK_N, BLOCK_K)
        contributor, contributors = _stream_k_contributor(tile, steps, p, P, units, FUSED_SPLITK)
        _finish_tile(acc, rows[None, :], offs_n[:, None], n_mask[:, None] & m_mask[None, :],
                     out_ptr, part_ptr, lock_ptr, bias_ptr, tile, contributor, M, N, stride_om,
                     contributors, HAS_BIAS, FUSED_SPLITK)


@triton.jit
def _tc_stream_k_flat(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                      M, N, K, stride_xm, stride_wn, stride_om, A8: tl.constexpr,
                      HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """_tc_stream_k_tiles' program as one loop over its units (tile, K step) instead of a K loop
    per tile. With a loop per tile, Triton's pipeliner fills its copies at each tile's start and
    drains them at its end, and with one or two programs per SM the memory system idles at
    every tile change (why stream-K lost to split-K on the H200, run-l). One loop keeps the next
    tile's weight copies in flight across the change.

    The pipeliner (Triton 3.6) gives up on a loop whose body holds the fused reduce's atomics
    (compiled for sm_90: one stage of shared memory), so inside the loop a tile is only stored:
    whole, or as a partial without the fused reduce. With it, the run's first and last tiles,
    the only ones other programs may share, are kept in registers and finished after the loop.
    Each tile's products are summed in the same order from zero and scaled and finished as
    there, so the bits are the same."""
    steps = tl.cdiv(K, BLOCK_K)
    p, P, units, u_begin, u_end = _stream_k_run(N, steps, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    m_mask = rows < M
    kk = tl.arange(0, BLOCK_K)
    x_cols = x_ptr + rows[None, :] * stride_xm
    first_tile = u_begin // steps
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    first_done = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    last_done = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for u in range(u_begin, u_end):
        tile = u // steps
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        offs_k = (u - tile * steps) * BLOCK_K + kk
        k_ok = offs_k < K
        w = tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :],
                    mask=n_mask[:, None] & k_ok[None, :], other=0.0)
        xt = tl.load(x_cols + offs_k[:, None], mask=m_mask[None, :] & k_ok[:, None], other=0.0)
        acc = tl.dot(w, xt, acc)
        if (u == (tile + 1) * steps - 1) | (u == u_end - 1):  # the run's last unit of this tile
            done = acc
            if A8:
                sw = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
                sx = tl.load(xs_ptr + rows, mask=m_mask, other=0.0)
                done = acc * sw[:, None] * sx[None, :]
            contributor, contributors = _stream_k_contributor(tile, steps, p, P, units,
                                                              FUSED_SPLITK)
            if not FUSED_SPLITK:  # every tile a partial for the separate reduce
                _finish_tile(done, rows[None, :], offs_n[:, None],
                             n_mask[:, None] & m_mask[None, :], out_ptr, part_ptr, lock_ptr,
                             bias_ptr, tile, contributor, M, N, stride_om, contributors, HAS_BIAS,
                             False)
            elif contributors == 1:  # a whole tile: the literal 1 compiles the store alone
                _finish_tile(done, rows[None, :], offs_n[:, None],
                             n_mask[:, None] & m_mask[None, :], out_ptr, part_ptr, lock_ptr,
                             bias_ptr, tile, 0, M, N, stride_om, 1, HAS_BIAS, False)
            elif tile == first_tile:
                first_done = done
            else:
                last_done = done
            acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    if FUSED_SPLITK:
        last_tile = (u_end - 1) // steps
        for i in tl.static_range(2):
            tile = first_tile if i == 0 else last_tile
            contributor, contributors = _stream_k_contributor(tile, steps, p, P, units, True)
            if (contributors > 1) & ((i == 0) | (last_tile != first_tile)):
                offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
                _finish_tile(first_done if i == 0 else last_done, rows[None, :], offs_n[:, None],
                             (offs_n < N)[:, None] & m_mask[None, :], out_ptr, part_ptr, lock_ptr,
                             bias_ptr, tile, contributor, M, N, stride_om, contributors, HAS_BIAS,
                             True)


@triton.jit
def _int4_tc_gemv_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr, M, N, K, stride_xm,
                         stride_wn, stride_sn, stride_sg, stride_om, SPLIT_K,
                         GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                         HAS_BIAS: tl.constexpr, X_BF16: tl.constexpr, ASM: tl.constexpr,
                         ONE_DOT: tl.constexpr = False, PDL: tl.constexpr = False):
    # int4 weight-only product for a few rows on the tensor cores, operands swapped: out^T tile
    # [BLOCK_N, BLOCK_M] = W tile [BLOCK_N, K] @ x^T [K, BLOCK_M], so the dequantized weights are
    # the dot's first operand, straight from registers, and x (BLOCK_M <= 16 rows, padded) the
    # small second one. Per K group, the eight nibbles of each 32-bit word are eight [BLOCK_N,
    # GROUP / 8] operands, each dotted with the x columns k = 8c + i that it holds: a fixed
    # permutation of k within the group, the same on both sides. Grid (N tiles, K splits).
    pdl_start(PDL)
    pid_n, pid_k, offs_n, n_mask, rows, m_mask = _few_rows_tile(M, N, BLOCK_N, BLOCK_M)
    WORDS: tl.constexpr = GROUP // 8
    cols = tl.arange(0, WORDS)
    words = w_ptr.to(tl.pointer_type(tl.int32))
    w_rows = words + offs_n.to(tl.int64)[:, None] * (stride_wn // 4)
    g_begin, g_end = _split_range(tl.cdiv(K, GROUP), SPLIT_K, pid_k)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for g in range(g_begin, g_end):
        word = tl.load(w_rows + (g * WORDS + cols)[None, :], mask=n_mask[:, None], other=0)
        q0, q1, q2, q3, q4, q5, q6, q7 = _int4_words_16(word, X_BF16, ASM)
        if ONE_DOT:
            # The eight nibble tensors back in k order (join's new dim is the minor one: k = 8c +
            # 4u + 2v + b from join(join(join(q0, q4), join(q2, q6)), join(join(q1, q5), ...)),
            # then one dot with x^T over the whole group.
            w = tl.join(tl.join(tl.join(q0, q4), tl.join(q2, q6)),
                        tl.join(tl.join(q1, q5), tl.join(q3, q7)))
            w = tl.reshape(w, (BLOCK_N, GROUP))
            offs_k = g * GROUP + tl.arange(0, GROUP)
            xt = tl.load(x_ptr + rows[None, :] * stride_xm + offs_k[:, None], mask=m_mask[None, :],
                         other=0.0)
            part = tl.dot(w, xt)
        else:
            xk = x_ptr + rows[None, :] * stride_xm + (g * GROUP + 8 * cols)[:, None]
            xm = m_mask[None, :]
            part = tl.dot(q0, tl.load(xk, mask=xm, other=0.0))
            part = tl.dot(q1, tl.load(xk + 1, mask=xm, other=0.0), part)
            part = tl.dot(q2, tl.load(xk + 2, mask=xm, other=0.0), part)
            part = tl.dot(q3, tl.load(xk + 3, mask=xm, other=0.0), part)
            part = tl.dot(q4, tl.load(xk + 4, mask=xm, other=0.0), part)
            part = tl.dot(q5, tl.load(xk + 5, mask=xm, other=0.0), part)
            part = tl.dot(q6, tl.load(xk + 6, mask=xm, other=0.0), part)
            part = tl.dot(q7, tl.load(xk + 7, mask=xm, other=0.0), part)
        s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg, mask=n_mask, other=0.0)
        acc += part * s[:, None]
    mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + rows[None, :] * stride_om + offs_n[:, None],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + (pid_k * M + rows[None, :]) * N + offs_n[:, None], acc, mask=mask)


# Candidates of the tensor-core GEMV, per kind: the K split by pick_split_k over K / BLOCK_K
# steps, or named (split_cfg, a run-time argument: no compiled variant of its own). bf16: the
# batch-1 sweep's winners at the 8B layer shapes on the H200 (BLOCK_N 64 x BLOCK_K 128, split
# 1/2/4; benchmarks/kernels/sweep_gemv_tc_h200.json); few, so a bf16 checkpoint (no engine.json
# to store the tuning) tunes little at start-up. fp8: the set the engine runs were measured with.
# fp8 dots on sm_90 accumulate in reduced precision along one chain (Triton's default there), so
# no fp8 split runs more than TC_FP8_CHAIN_MAX of K: a cut set with whole-K splits (the sweep's
# fastest at some shapes) failed the float16 tolerance at K = 14336 on the H200 (2.9e-3 > 2e-3).
# The stream-K candidates, the flat ones (FLAT) too, are tuned only with KILN_TC_STREAM_K=1.
TC_FP8_CHAIN_MAX = 4096
TC_GEMV_CONFIGS_FP8 = [
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=256),
    _cfg(4, 3, BLOCK_N=128, BLOCK_K=128),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=4),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=256, split_cfg=4),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=8),
    _cfg(4, 3, BLOCK_N=128, BLOCK_K=128, split_cfg=8),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, STREAM_K=2),
    _cfg(4, 6, BLOCK_N=64, BLOCK_K=128, STREAM_K=2, FLAT=True),
    _cfg(4, 8, BLOCK_N=64, BLOCK_K=128, STREAM_K=1, FLAT=True),
]
TC_GEMV_CONFIGS_FLOAT = [
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=2),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=4),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, STREAM_K=2),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, STREAM_K=2, FLAT=True),
    _cfg(4, 6, BLOCK_N=64, BLOCK_K=128, STREAM_K=1, FLAT=True),
]
TC_GEMV_CONFIGS = TC_GEMV_CONFIGS_FP8 + TC_GEMV_CONFIGS_FLOAT
INTERPRET_TC_GEMV = {"BLOCK_N": 16, "BLOCK_K": 32}


def _tc_prune(configs, named_args, **kwargs):
    """Keep the candidates of this call's kind (fp8 codes or float weights)."""
    wanted = TC_GEMV_CONFIGS_FP8 if kwargs["A8"] else TC_GEMV_CONFIGS_FLOAT
    # a forced split (split_hint) leaves out the stream-K candidates, which cut K themselves
    return [c for c in configs if any(c is w for w in wanted)
            and not (c.kwargs.get("STREAM_K")
                     and (named_args["split_hint"] > 0 or not tc_stream_k_enabled()))]


def tc_split(m: int, n: int, k: int, block_k: int, num_sms: int, hint: int, block_n: int,
             cfg_split: int, a8: bool) -> int:
    """SPLIT_K of one tensor-core GEMV launch: split_for over K / block_k steps, raised for fp8 so
    that no split is longer than TC_FP8_CHAIN_MAX (a forced hint is kept as given)."""
    split = split_for(m, n, k, block_k, num_sms, hint, block_n, None, cfg_split)
    if a8 and hint <= 0:
        split = max(split, min(MAX_SPLIT_K, triton.cdiv(k, TC_FP8_CHAIN_MAX)))
    return min(split, triton.cdiv(k, block_k)) if hint <= 0 else split


def tc_stream_k(n: int, k: int, block_n: int, block_k: int, num_sms: int, per_sm: int,
                a8: bool) -> tuple[int, int]:
    """(programs, most contributors of one tile) of a stream-K tensor-core GEMV launch: per_sm
    programs per SM (at most one per unit), raised for fp8 so that no program's run within one
    tile is longer than TC_FP8_CHAIN_MAX of K."""
    steps = triton.cdiv(k, block_k)
    longest = max(1, TC_FP8_CHAIN_MAX // block_k) if a8 and steps * block_k > TC_FP8_CHAIN_MAX else 0
    return stream_k_grid(triton.cdiv(n, block_n), steps, num_sms, per_sm, longest)


def _tc_split_heuristic(args: dict) -> int:
    return tc_split(args["M"], args["N"], args["K"], args["BLOCK_K"], args["num_sms"],
                    args["split_hint"], args["BLOCK_N"], int(args.get("split_cfg") or 0),
                    bool(args["A8"]))


_tc_gemv_split = triton.heuristics({"SPLIT_K": _tc_split_heuristic})(_tc_gemv_kernel)
_tc_gemv_tuned = triton.autotune(TC_GEMV_CONFIGS, key=["N", "K", "A8", "BLOCK_M", "HAS_BIAS",
                                                       "FUSED_SPLITK", "split_hint"],
                                 prune_configs_by={"early_config_prune": _tc_prune})(_tc_gemv_split)


def tc_stream_k_enabled() -> bool:
    """Whether the tensor-core GEMV's stream-K candidates (equal runs of the tiles' K steps per
    program, STREAM_K) may be tuned or taken from an engine's stored tuning (KILN_TC_STREAM_K=1;
    off by default). On the H200 they were 5-20% slower than the split-K candidates at every 8B
    layer, bf16 and fp8, and the 8B batch-1 engines were no faster with them (bf16 233.4 / 233.5
    against 233.5 / 234.8 tok/s, fp8 348.4 against 348.4; benchmarks/h200-quant/run-l). The
    flat candidates (FLAT: one loop over a program's units, copies kept in flight across tile
    changes) came after that and have not run on the H200 yet (benchmarks/h200-quant, run-z)."""
    return os.environ.get("KILN_TC_STREAM_K", "0") == "1"


def early_weight_steps(pdl: dict, a8: bool) -> dict:
    """The tensor-core GEMV's EARLY_W launch argument: KILN_GEMV_EARLY_W (0, 1, 2 or 4) K steps of
    each program's weight tiles are loaded into registers before the kernel waits for the one
    before it; unset: 1 for fp8 weights (a8), 0 for float ones. Only under PDL (otherwise
    nothing runs before that kernel ends). On the H200, 8B batch 1 (benchmarks/h200-quant, run-o):
    fp8 350.0 -> 354.5 tok/s with 1 (2 and 4: 315 and 310), bf16 232.8 -> 231.0 with 1."""
    flag = os.environ.get("KILN_GEMV_EARLY_W", "")
    if flag not in ("", "0", "1", "2", "4"):
        raise ValueError(f"KILN_GEMV_EARLY_W={flag!r}: expected 0, 1, 2 or 4")
    steps = int(flag) if flag else (1 if a8 else 0)
    return {"EARLY_W": steps} if steps and pdl.get("PDL") else {}


TC_GEMV_MAX_M = 16     # rows the tensor-core int4 product takes (one BLOCK_M = 16 tile)
TC_GEMV_BLOCK_N = 64


def int4_tc_enabled() -> bool:
    """Whether int4 decode rows (up to GEMV_MAX_M) take the tensor-core kernel instead of the FMA
    GEMV (KILN_INT4_TC=1). Off by default: on the H200 it was slower than the FMA GEMV at every
    8B layer shape (benchmarks/h200-quant/README.md, sweep_gemv_tc_h200.json), and on an H100 at
    the LM head (benchmarks/head/README.md)."""
    return os.environ.get("KILN_INT4_TC", "0") == "1"


def int4_tc_gemv(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group: int,
                 bias: torch.Tensor | None, out_dtype: torch.dtype, split_k: int = 0,
                 block_n: int = TC_GEMV_BLOCK_N, num_warps: int = 4,
                 num_stages: int = 3, one_dot: bool = True) -> torch.Tensor:
    """int4 weight-only x2 [M <= 16, K] @ dequant(qweight, scales).T on the tensor cores
    (_int4_tc_gemv_kernel): float16/bfloat16 x, K groups of 128 (the dots need K >= 16 per
    nibble position). split_k 0 picks the split as the GEMV does. one_dot (the default) puts each
    group's weights back in k order for one dot; False keeps eight dots, one per nibble position,
    whose x slices the compiler stages one by one (compile_sm90.py: a barrier each)."""
    m, k = x2.shape
    n = qweight.shape[0]
    if m > TC_GEMV_MAX_M or group != 128 or x2.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"int4_tc_gemv takes up to {TC_GEMV_MAX_M} float16/bfloat16 rows and "
                         f"groups of 128, got {m} {x2.dtype} rows, group {group}")
    if qweight.stride(0) % 4 or qweight.data_ptr() % 4:
        raise ValueError("int4_tc_gemv reads the packed weights as 32-bit words: rows must be "
                         "4-byte aligned")
    groups = k // group
    split = split_k or pick_split_k(triton.cdiv(n, block_n), groups, _num_sms(x2.device))
    split = max(1, min(split, groups, MAX_SPLIT_K))
    out = torch.empty(m, n, dtype=out_dtype, device=x2.device)
    part = torch.empty(split * m * n, dtype=torch.float32, device=x2.device) if split > 1 else out
    has_bias = bias is not None
    launch_opts = dict(num_warps=num_warps, num_stages=num_stages) if x2.is_cuda else {}
    _int4_tc_gemv_kernel[(triton.cdiv(n, block_n), split)](
        x2, qweight, scales, bias if has_bias else out, out, part, m, n, k, x2.stride(0),
        qweight.stride(0), scales.stride(0), scales.stride(1), out.stride(0), split,
        GROUP=group, BLOCK_N=block_n, BLOCK_M=16, HAS_BIAS=has_bias,
        X_BF16=x2.dtype == torch.bfloat16, ASM=x2.is_cuda, ONE_DOT=one_dot, **launch_opts,
        **pdl_args(x2))
    if split > 1:
        _reduce_splits(part, bias, out, split, pdl_args(x2))
    return out


def tc_gemv_enabled(kind: str) -> bool:
    """Whether decode rows (up to SMALL_M) of kind "fp8" (W8A8) or "float" (unquantized
    float16/bfloat16 weights) take the tensor-core GEMV (tc_gemv). KILN_TC_GEMV=1 (the default)
    turns both on, =fp8 or =float one, =0 none. On the H200, 8B batch-1 decode: fp8 270.7 ->
    298.3 tok/s, bf16 220.3 -> 225.9 (benchmarks/h200-quant/README.md, run-g)."""
    flag = os.environ.get("KILN_TC_GEMV", "1")
    return flag == "1" or flag == kind


def tc_gemv_ok(x2: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether tc_gemv takes this product: at most SMALL_M rows, fp8 weights with fp8 codes or
    float16/bfloat16 weights with x of their dtype, K a multiple of 32 (one fp8 dot step)."""
    if x2.shape[0] > SMALL_M or w.shape[1] % 32:
        return False
    if w.dtype == torch.float8_e4m3fn:
        return x2.dtype == torch.float8_e4m3fn
    return w.dtype in (torch.float16, torch.bfloat16) and x2.dtype == w.dtype


def tc_gemv(x2: torch.Tensor, x_scales: torch.Tensor | None, w: torch.Tensor,
            w_scales: torch.Tensor | None, bias: torch.Tensor | None, out_dtype: torch.dtype,
            split_k: int = 0, config: triton.Config | None = None) -> torch.Tensor:
    """x2 [M <= SMALL_M, K] @ w [N, K].T on the tensor cores (_tc_gemv_kernel), float32
    accumulation; returns [M, N] of out_dtype. W8A8: x2 holds fp8 codes with per-token scales
    x_scales [M, 1] and w fp8 with per-channel w_scales [N]; otherwise x2 and w are float16 or
    bfloat16 and both scales are None. split_k > 0 forces the K split and config (CUDA) a launch
    configuration (benchmarks); else the autotuned one (or the first candidate)."""
    m, k = x2.shape
    n = w.shape[0]
    a8 = x_scales is not None
    if not tc_gemv_ok(x2, w) or a8 != (w_scales is not None) or a8 != (w.dtype == torch.float8_e4m3fn):
        raise ValueError(f"tc_gemv takes up to {SMALL_M} rows with K a multiple of 32: fp8 codes "
                         f"and weights with both scales, or float16/bfloat16 of one dtype without; "
                         f"got x {tuple(x2.shape)} {x2.dtype}, w {tuple(w.shape)} {w.dtype}")
    if split_k > MAX_SPLIT_K:
        raise ValueError(f"split_k={split_k} needs split_k <= {MAX_SPLIT_K}")
    if split_k > 0 and config is not None and config.kwargs.get("STREAM_K"):
        raise ValueError("a stream-K configuration cuts K itself: it takes no split_k")
    sms = _num_sms(x2.device)
    tune = x2.is_cuda and autotune_enabled() and config is None
    kind_configs = TC_GEMV_CONFIGS_FP8 if a8 else TC_GEMV_CONFIGS_FLOAT
    fixed = config or (kind_configs[0] if x2.is_cuda else triton.Config(INTERPRET_TC_GEMV))
    candidates = kind_configs if tune else [fixed]

    def shape(c: dict) -> tuple[int, int]:
        """(grid width, K splits or most contributors per tile) of configuration kwargs c."""
        if c.get("STREAM_K"):
            return tc_stream_k(n, k, c["BLOCK_N"], c["BLOCK_K"], sms, c["STREAM_K"], a8)
        return (triton.cdiv(n, c["BLOCK_N"]),
                tc_split(m, n, k, c["BLOCK_K"], sms, split_k, c["BLOCK_N"],
                         int(c.get("split_cfg") or 0), a8))

    max_split = max(max(shape(c.kwargs)[1] for c in candidates), 1)
    locks = None
    if max_split > 1 and fused_splitk_enabled() and triton.cdiv(n, 16) <= SPLIT_LOCKS:
        locks = split_locks(x2.device)
    out = torch.empty(m, n, dtype=out_dtype, device=x2.device)
    part = _partials(max_split, m, n, out, locks is None and any(c.kwargs.get("STREAM_K")
                                                                 for c in candidates))
    has_bias = bias is not None
    chosen = {}

    def grid(meta):
        width, chosen["split"] = shape(meta)
        return (width, 1) if meta.get("STREAM_K") else (width, chosen["split"])

    args = (x2, x_scales if a8 else x2, w, w_scales if a8 else w, bias if has_bias else out, out,
            part, locks if locks is not None else out, m, n, k, x2.stride(0), w.stride(0),
            out.stride(0), sms, split_k)
    flags = dict(A8=a8, HAS_BIAS=has_bias, FUSED_SPLITK=locks is not None, BLOCK_M=16)
    pdl = pdl_args(x2)
    # every candidate's K step (BLOCK_K >= 32 elements, one byte or more each) is a multiple of
    # 32 bytes
    flags.update(prefetch_steps(w, 32, pdl))
    flags.update(early_weight_steps(pdl, a8))
    _run(_tc_gemv_tuned if tune else _tc_gemv_split, grid, args, flags, fixed, tune, x2, pdl)
    split = chosen["split"]
    assert split <= max_split, "partial buffer sized for fewer splits than the kernel used"
    if split > 1 and locks is None:
        _reduce_splits(part, bias, out, split, pdl)
    return out
