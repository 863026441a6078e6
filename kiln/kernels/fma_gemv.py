"""The FMA GEMV for decode rows (M <= GEMV_MAX_M): int4/int8 weight-only, fp8/int8 W8A8 and
unquantized weights, each program owning BLOCK_N output columns for all rows and streaming its
weight rows along K once; dequantized values meet x in float32 FMAs (int4: float16 word dots by
default). Its launch candidates, split heuristic and autotuner live here too."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
import triton.testing

from kiln.kernels.int4_bits import (_int4_dword_dot, _int4_rows, _int4_word_dot, _int4_words_f32,
                                    _nibbles_f32, _x_pairs_at)
from kiln.kernels.pdl import pdl_start
from kiln.kernels.qmm_common import (_TUNE_KEY, _bytes_f32, _cfg, _finish_tile, _load_weight,
                                     _prefetch_budget, _prefetch_rows, _split_heuristic,
                                     _split_range, _stream_k_contributor, _stream_k_run)
from kiln.kernels.quant_act import quantize_to_codes, token_scale


@triton.jit
def _gemv_load(w_ptr, s_ptr, offs_n, n_mask, g, valid, K, stride_wn, stride_sn, stride_sg,
               WKIND: tl.constexpr, GROUP: tl.constexpr, INT4_ASM: tl.constexpr,
               ROW_BLOCK: tl.constexpr):
    """K group g's scales and weights as _gemv_use takes them: int4 as 64-bit double words
    (INT4_ASM >= 4), 32-bit words (1 to 3) or bytes; other kinds as their raw tile. ROW_BLOCK > 1:
    int4 rows stored in blocks (_int4_rows)."""
    if WKIND == 4:
        s = 1.0  # unquantized weights have no scales (s_ptr is not read)
    else:
        s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg,
                    mask=n_mask & valid, other=0.0)
    if WKIND == 0 and INT4_ASM >= 4 and ROW_BLOCK > 1:
        dwords = w_ptr.to(tl.pointer_type(tl.int64))
        offs_d = g * (ROW_BLOCK * (GROUP // 16)) + tl.arange(0, GROUP // 16)
        w = tl.load(dwords + (_int4_rows(offs_n, stride_wn, GROUP, ROW_BLOCK) // 8)[:, None]
                    + offs_d[None, :], mask=n_mask[:, None] & valid, other=0)
    elif WKIND == 0 and INT4_ASM and ROW_BLOCK > 1:
        words = w_ptr.to(tl.pointer_type(tl.int32))
        offs_w = g * (ROW_BLOCK * (GROUP // 8)) + tl.arange(0, GROUP // 8)
        w = tl.load(words + (_int4_rows(offs_n, stride_wn, GROUP, ROW_BLOCK) // 4)[:, None]
                    + offs_w[None, :], mask=n_mask[:, None] & valid, other=0)
    elif WKIND == 0 and INT4_ASM >= 4:
        dwords = w_ptr.to(tl.pointer_type(tl.int64))
        offs_d = g * (GROUP // 16) + tl.arange(0, GROUP // 16)
        w = tl.load(dwords + offs_n.to(tl.int64)[:, None] * (stride_wn // 8) + offs_d[None, :],
                    mask=n_mask[:, None] & valid, other=0)
    elif WKIND == 0 and INT4_ASM:
        words = w_ptr.to(tl.pointer_type(tl.int32))
        offs_w = g * (GROUP // 8) + tl.arange(0, GROUP // 8)
        w = tl.load(words + offs_n.to(tl.int64)[:, None] * (stride_wn // 4) + offs_w[None, :],
                    mask=n_mask[:, None] & valid, other=0)
    else:
        w = _load_weight(w_ptr, offs_n, g, stride_wn, K, n_mask, valid, GROUP, WKIND, ROW_BLOCK)
    return s, w


@triton.jit
def _gemv_use(acc, acc_w, acc_d, s, w, x_ptr, x_scale, rows, g, valid, M, K, stride_xm,
              WKIND: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
              QX: tl.constexpr, INT4_ASM: tl.constexpr):
    """Add K group g's products of the weights w (scales s, both from _gemv_load) with x's rows
    to the accumulators (acc [BLOCK_M, BLOCK_N]; one row with INT4_ASM 2/3: acc_w per word, 4/5:
    acc_d per double word, summed by _gemv_acc at the end)."""
    if WKIND == 0 and INT4_ASM >= 4:
        offs_d = g * (GROUP // 16) + tl.arange(0, GROUP // 16)
        x_words = x_ptr.to(tl.pointer_type(tl.int32))
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_d * 16 < K) & (m < M) & valid
            x_row = x_words + m * (stride_xm // 2) + 8 * offs_d
            p0, p1, p2, p3 = _x_pairs_at(x_row, x_mask, INT4_ASM == 5)
            p4, p5, p6, p7 = _x_pairs_at(x_row + 4, x_mask, INT4_ASM == 5)
            dots = _int4_dword_dot(w, p0[None, :], p1[None, :], p2[None, :], p3[None, :],
                                   p4[None, :], p5[None, :], p6[None, :], p7[None, :])
            if BLOCK_M == 1:  # scaled per double word; summed once, at the end
                acc_d += dots * s[:, None]
            else:
                part = tl.sum(dots, axis=1) * s
                acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    elif WKIND == 0 and INT4_ASM >= 2:
        offs_w = g * (GROUP // 8) + tl.arange(0, GROUP // 8)
        x_words = x_ptr.to(tl.pointer_type(tl.int32))
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_w * 8 < K) & (m < M) & valid
            x_row = x_words + m * (stride_xm // 2) + 4 * offs_w
            p0, p1, p2, p3 = _x_pairs_at(x_row, x_mask, INT4_ASM == 3)
            dots = _int4_word_dot(w, p0[None, :], p1[None, :], p2[None, :], p3[None, :])
            if BLOCK_M == 1:  # scaled per word; summed over the words once, at the end
                acc_w += dots * s[:, None]
            else:
                part = tl.sum(dots, axis=1) * s
                acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    elif WKIND == 0 and INT4_ASM:
        q0, q1, q2, q3, q4, q5, q6, q7 = _int4_words_f32(w)
        offs_j = g * GROUP + 8 * tl.arange(0, GROUP // 8)
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_j < K) & (m < M) & valid
            x_row = x_ptr + m * stride_xm + offs_j
            p = q0 * tl.load(x_row, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q1 * tl.load(x_row + 1, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q2 * tl.load(x_row + 2, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q3 * tl.load(x_row + 3, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q4 * tl.load(x_row + 4, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q5 * tl.load(x_row + 5, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q6 * tl.load(x_row + 6, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q7 * tl.load(x_row + 7, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            part = tl.sum(p, axis=1) * s
            acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    elif WKIND == 0:
        lo, hi = _nibbles_f32(w)
        # x at even / odd k (tiny, served from L1) pairs with the low / high nibbles:
        # splitting x costs far less than interleaving the whole dequantized tile into
        # k order (a shared-memory round trip on sm_90).
        offs_k = g * GROUP + tl.arange(0, GROUP)
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_k < K) & (m < M) & valid
            xv = tl.load(x_ptr + m * stride_xm + offs_k, mask=x_mask, other=0.0).to(tl.float32)
            xe, xo = tl.split(tl.reshape(xv, (GROUP // 2, 2)))
            part = tl.sum(lo * xe[None, :] + hi * xo[None, :], axis=1) * s
            acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    else:
        wf = _bytes_f32(w, WKIND)
        offs_k = g * GROUP + tl.arange(0, GROUP)
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_k < K) & (m < M) & valid
            xv = tl.load(x_ptr + m * stride_xm + offs_k, mask=x_mask, other=0.0).to(tl.float32)
            if QX != 0:  # the code's value, as the GEMV would read it back
                xv = quantize_to_codes(xv, tl.sum(tl.where(rows == m, x_scale, 0.0), axis=0),
                                       QX == 2).to(tl.float32)
            part = tl.sum(wf * xv[None, :], axis=1) * s
            acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    return acc, acc_w, acc_d


@triton.jit
def _gemv_acc(x_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, g_begin, g_end, M, K, stride_xm,
              stride_wn, stride_sn, stride_sg, WKIND: tl.constexpr, GROUP: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
              QX: tl.constexpr, INT4_ASM: tl.constexpr, ROW_BLOCK: tl.constexpr,
              EARLY: tl.constexpr = 0, s0=0.0, w0=0):
    """The GEMV's float32 [BLOCK_M, BLOCK_N] tile over K groups [g_begin, g_end), unscaled by x's
    scales (see _gemv_kernel). EARLY: group g_begin's scales s0 and weights w0 were loaded
    already (_gemv_load, as the loop would load them); the groups are summed in the same order."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_w = tl.zeros([BLOCK_N, GROUP // 8], tl.float32)  # INT4_ASM 2/3, one row: per word
    acc_d = tl.zeros([BLOCK_N, GROUP // 16], tl.float32)  # INT4_ASM 4/5, one row
    start = g_begin
    if EARLY:
        acc, acc_w, acc_d = _gemv_use(acc, acc_w, acc_d, s0, w0, x_ptr, x_scale, rows, g_begin,
                                      g_begin < g_end, M, K, stride_xm, WKIND, GROUP, BLOCK_M, QX,
                                      INT4_ASM)
        start = g_begin + 1
    for g0 in range(start, g_end, UNROLL):
        for u in tl.static_range(UNROLL):
            g = g0 + u
            valid = g < g_end
            s, w = _gemv_load(w_ptr, s_ptr, offs_n, n_mask, g, valid, K, stride_wn, stride_sn,
                              stride_sg, WKIND, GROUP, INT4_ASM, ROW_BLOCK)
            acc, acc_w, acc_d = _gemv_use(acc, acc_w, acc_d, s, w, x_ptr, x_scale, rows, g, valid,
                                          M, K, stride_xm, WKIND, GROUP, BLOCK_M, QX, INT4_ASM)
    if WKIND == 0 and INT4_ASM >= 4 and BLOCK_M == 1:
        acc = tl.sum(acc_d, axis=1)[None, :]
    elif WKIND == 0 and INT4_ASM >= 2 and BLOCK_M == 1:
        acc = tl.sum(acc_w, axis=1)[None, :]
    return acc


@triton.jit(do_not_specialize=["split_cfg"])
def _gemv_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_wn, stride_sn, stride_sg, stride_om, num_sms, split_hint,
                 WKIND: tl.constexpr, A8: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                 SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr,
                 BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, QX: tl.constexpr = 0,
                 QX_BLOCK: tl.constexpr = 1024, INT4_ASM: tl.constexpr = 0, split_cfg=0,
                 PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
                 PREFETCH_MB: tl.constexpr = 0, STREAM_K: tl.constexpr = 0,
                 ROW_BLOCK: tl.constexpr = 1, EARLY: tl.constexpr = 0):
    # Grid (N tiles, K splits). The weight tile of each group is loaded once and used for all
    # BLOCK_M (<= 4) rows of x; each row's partial dot is reduced along K per group, so the
    # scale multiplies a [BLOCK_N] vector, not every element.
    # QX 1 (fp8) / 2 (int8): x is the float activation and each program quantizes it per token
    # itself with _quant_per_token_kernel's own helpers, so the products are the bits of the
    # separate quantization launch, which is saved.
    # INT4_ASM (CUDA): int4 weights are read as 32-bit words. 1: dequantized by _int4_words_f32
    # (two nibbles per packed instruction; 5-9% faster per 8B layer shape on the H200) and
    # multiplied in float32. 2 (bfloat16 x) / 3 (float16 x): multiplied two at a time in float16
    # by _int4_word_dot (about 35% fewer instructions per weight in the sm_90 SASS); 4 / 5: the
    # same over 64-bit double words (_int4_dword_dot, about 40% fewer). A tile that comes out
    # with an inf or nan is computed again as in 1, so float16's range never decides the result.
    # split_cfg: the K split a launch configuration asks for (0: the heuristic's); only the
    # SPLIT_K heuristic and the grid read it. A run-time value, so configurations that differ only
    # in it share one compiled kernel.
    # PREFETCH > 0 (CUDA, with PDL): as in _tc_gemv_kernel, over the first PREFETCH groups.
    # STREAM_K > 0: grid (P, 1), P programs each streaming an equal run of the tiles' K groups,
    # as in _tc_gemv_kernel (_stream_k_tiles).
    # ROW_BLOCK > 1 (int4, no PREFETCH): the weights are stored in blocks of ROW_BLOCK rows
    # (tile_int4_rows), so a program's rows of one group are runs of ROW_BLOCK * 64 bytes.
    # EARLY 1 (not stream-K): each program loads its first K group's scales and weights (which
    # no kernel writes) before it waits for the kernel before (pdl_start), so that under PDL
    # that load overlaps the end of the kernel before; x is read after the wait, and the
    # groups are summed in the same order (the same bits).
    rows = tl.arange(0, BLOCK_M)
    m_mask = rows < M
    if STREAM_K == 0:
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        g_begin, g_end = _split_range(tl.cdiv(K, GROUP), SPLIT_K, pid_k)
        if PREFETCH > 0:
            tl.static_assert(ROW_BLOCK == 1, "the L2 prefetch reads row-major weights")
            # weight elements per group and per row (int4: bytes of two nibbles)
            PER_GROUP: tl.constexpr = GROUP // 2 if WKIND == 0 else GROUP
            row_len = K // 2 if WKIND == 0 else K
            ELEM: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
            steps = _prefetch_budget(PREFETCH, PREFETCH_MB, BLOCK_N * PER_GROUP * ELEM)
            _prefetch_rows(w_ptr, offs_n, n_mask, stride_wn, g_begin * PER_GROUP,
                           tl.minimum(tl.minimum(g_end, g_begin + steps) * PER_GROUP, row_len), ELEM)
        if EARLY:
            s0, w0 = _gemv_load(w_ptr, s_ptr, offs_n, n_mask, g_begin, g_begin < g_end, K,
                                stride_wn, stride_sn, stride_sg, WKIND, GROUP, INT4_ASM, ROW_BLOCK)
        else:
            s0 = 0.0
            w0 = 0
    pdl_start(PDL)
    x_scale = tl.zeros([BLOCK_M], tl.float32)
    if QX != 0:
        for m in tl.static_range(BLOCK_M):  # the whole row, from L2: every split needs its scale
            row_scale = token_scale(x_ptr + m * stride_xm, K, m < M, QX == 2, QX_BLOCK)
            x_scale = tl.where(rows == m, row_scale, x_scale)
    if STREAM_K == 0:
        acc = _gemv_tile(x_ptr, xs_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, m_mask,
                         g_begin, g_end, M, K, stride_xm, stride_wn, stride_sn, stride_sg, WKIND,
                         A8, GROUP, BLOCK_M, BLOCK_N, UNROLL, QX, INT4_ASM, ROW_BLOCK, EARLY, s0,
                         w0)
        _finish_tile(acc, rows[:, None], offs_n[None, :], m_mask[:, None] & n_mask[None, :],
                     out_ptr, part_ptr, lock_ptr, bias_ptr, pid_n, pid_k, M, N, stride_om,
                     SPLIT_K, HAS_BIAS, FUSED_SPLITK)
    else:
        steps = tl.cdiv(K, GROUP)
        p, P, units, u_begin, u_end = _stream_k_run(N, steps, BLOCK_N)
        for tile in range(u_begin // steps, tl.cdiv(u_end, steps)):
            offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < N
            acc = _gemv_tile(x_ptr, xs_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, m_mask,
                             tl.maximum(u_begin, tile * steps) - tile * steps,
                             tl.minimum(u_end, (tile + 1) * steps) - tile * steps, M, K,
                             stride_xm, stride_wn, stride_sn, stride_sg, WKIND, A8, GROUP,
                             BLOCK_M, BLOCK_N, UNROLL, QX, INT4_ASM, ROW_BLOCK)
            contributor, contributors = _stream_k_contributor(tile, steps, p, P, units,
                                                              FUSED_SPLITK)
            _finish_tile(acc, rows[:, None], offs_n[None, :], m_mask[:, None] & n_mask[None, :],
                         out_ptr, part_ptr, lock_ptr, bias_ptr, tile, contributor, M, N,
                         stride_om, contributors, HAS_BIAS, FUSED_SPLITK)


@triton.jit
def _gemv_tile(x_ptr, xs_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, m_mask, g_begin, g_end,
               M, K, stride_xm, stride_wn, stride_sn, stride_sg, WKIND: tl.constexpr,
               A8: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, QX: tl.constexpr,
               INT4_ASM: tl.constexpr, ROW_BLOCK: tl.constexpr, EARLY: tl.constexpr = 0,
               s0=0.0, w0=0):
    """The GEMV's float32 [BLOCK_M, BLOCK_N] tile over K groups [g_begin, g_end), times x's
    scales (W8A8). EARLY, s0, w0: as _gemv_acc takes them (the float32 re-run reloads)."""
    acc = _gemv_acc(x_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, g_begin, g_end, M, K,
                    stride_xm, stride_wn, stride_sn, stride_sg, WKIND, GROUP, BLOCK_M, BLOCK_N,
                    UNROLL, QX, INT4_ASM, ROW_BLOCK, EARLY, s0, w0)
    if INT4_ASM >= 2:
        # float16 products can overflow only where |x| reaches about 1,000: any inf or nan in
        # the tile re-runs it with float32 products (which give inf or nan only from the data)
        if tl.sum(((acc - acc) != 0).to(tl.int32)) > 0:
            acc = _gemv_acc(x_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, g_begin, g_end, M,
                            K, stride_xm, stride_wn, stride_sn, stride_sg, WKIND, GROUP, BLOCK_M,
                            BLOCK_N, UNROLL, QX, 1, ROW_BLOCK)
    if QX != 0:
        acc *= x_scale[:, None]
    elif A8:
        acc *= tl.load(xs_ptr + rows, mask=m_mask, other=0.0)[:, None]
    return acc


# Candidates timed on the first call per (rows/bucket, N, K, weight kind, group, dtypes). More
# rows per thread (larger BLOCK_N per warp) share each converted x value across rows. These take
# the K split of pick_split_k.
GEMV_BASE_CONFIGS = [
    _cfg(4, 3, BLOCK_N=32, UNROLL=2),
    _cfg(4, 3, BLOCK_N=64, UNROLL=1),
    _cfg(4, 3, BLOCK_N=64, UNROLL=2),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1),
    _cfg(8, 3, BLOCK_N=128, UNROLL=1),
    _cfg(8, 3, BLOCK_N=256, UNROLL=1),
]
# Candidates naming their own split (split_cfg): the settings that won per 8B layer shape in the
# batch-1 sweep (benchmarks/kernels/sweep_gemv_*_h200.json), where the heuristic's split lost up
# to 40% (int4 down: 34.8 us tuned, 21.0 us at split 16). Tuned only under KILN_GEMV_TUNE_SPLIT=1
# until the autotuner has run them on the H200.
GEMV_SPLIT_CONFIGS = [
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, split_cfg=8),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, split_cfg=16),
    _cfg(4, 3, BLOCK_N=64, UNROLL=1, split_cfg=16),
    _cfg(4, 3, BLOCK_N=64, UNROLL=2, split_cfg=8),
    _cfg(2, 3, BLOCK_N=32, UNROLL=1, split_cfg=2),
    _cfg(2, 3, BLOCK_N=32, UNROLL=1, split_cfg=8),
    _cfg(2, 3, BLOCK_N=32, UNROLL=1, split_cfg=16),
    _cfg(2, 3, BLOCK_N=16, UNROLL=1, split_cfg=8),
]
# Stream-K candidates (STREAM_K programs per SM, each an equal run of the tiles' K groups; see
# _gemv_kernel), tuned unless KILN_GEMV_STREAM_K=0. On the H200: int4 gate_up 31.25 -> 29.46 us at
# BLOCK_N 128 x 4 per SM (benchmarks/h200-quant/run-l); 8B int4-wo batch 1 with these three
# candidates 388.8 tok/s against 340.5 with split-K alone, one machine (run-m).
GEMV_STREAM_K_CONFIGS = [
    _cfg(4, 3, BLOCK_N=64, UNROLL=1, STREAM_K=4),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, STREAM_K=3),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, STREAM_K=4),
]
GEMV_CONFIGS = (GEMV_BASE_CONFIGS
                + (GEMV_SPLIT_CONFIGS if os.environ.get("KILN_GEMV_TUNE_SPLIT", "0") == "1" else [])
                + (GEMV_STREAM_K_CONFIGS if os.environ.get("KILN_GEMV_STREAM_K", "1") != "0" else []))
# The CPU interpreter's one configuration: small, so tests stay fast, with UNROLL 2 so that the
# masked tail of the unrolled loop is exercised.
INTERPRET_GEMV = {"BLOCK_N": 16, "UNROLL": 2}
DEFAULT_GEMV = 1  # index into GEMV_CONFIGS used without autotuning


_gemv_split = triton.heuristics({"SPLIT_K": _split_heuristic})(_gemv_kernel)


def bench_from_memory(fn, quantiles=None, reps: int = 50):
    """Time fn (one GEMV launch) with its weights in HBM, not L2, and L2 holding clean lines.
    Triton's do_bench empties L2 by zeroing a 256 MB buffer, which leaves it full of dirty lines
    whose write-back then shares HBM with the kernel's own reads. Here L2 is refilled by reading
    a 256 MB buffer before each launch. Returns the median (and the quantiles asked for) in ms.

    Measured on the H200 (benchmarks/h200-quant/run-k): the int4 GEMV's tuned picks timed alone
    improved (per 8B layer, batch 1: 63.6 against 74.7 us, the sweep's best 62.0), but the
    engine tuned this way decoded no faster (377.7 against 377.0 tok/s, one machine): inside the
    decode graphs, under PDL, a kernel timed alone is not the kernel the step waits for. So it
    is an option (KILN_GEMV_TUNE_BENCH=memory), not the default."""
    buf = torch.empty(64 << 20, dtype=torch.float32, device="cuda")  # as do_bench: per call
    total = torch.empty((), dtype=torch.float32, device="cuda")
    fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        torch.sum(buf, dim=0, out=total)  # reads only: evicts the weights, dirties nothing
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = torch.tensor([a.elapsed_time(b) for a, b in zip(starts, ends)])
    med = times.median().item()
    if quantiles is None:
        return med
    return [torch.quantile(times, q).item() for q in quantiles]


def _gemv_bench(fn, quantiles=None):
    """The GEMV autotuner's timer: Triton's do_bench, or bench_from_memory with
    KILN_GEMV_TUNE_BENCH=memory."""
    if os.environ.get("KILN_GEMV_TUNE_BENCH", "triton") == "memory":
        return bench_from_memory(fn, quantiles)
    return triton.testing.do_bench(fn, quantiles=quantiles)


def _gemv_prune(configs, named_args, **kwargs):
    """A forced split (split_hint) leaves out the stream-K candidates, which cut K themselves."""
    return [c for c in configs if not (named_args["split_hint"] > 0 and c.kwargs.get("STREAM_K"))]


_gemv_tuned = triton.autotune(GEMV_CONFIGS, key=_TUNE_KEY + ["BLOCK_M", "FUSED_SPLITK", "INT4_ASM"],
                              prune_configs_by={"early_config_prune": _gemv_prune},
                              do_bench=_gemv_bench)(_gemv_split)


def int4_asm_ok(x2: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the GEMV may read int4 weights as 32-bit words through PTX (CUDA; 4-byte aligned
    rows; KILN_INT4_ASM=0 keeps the nibble-by-nibble path)."""
    return (x2.is_cuda and os.environ.get("KILN_INT4_ASM", "1") == "1" and w.data_ptr() % 4 == 0
            and w.stride(0) % 4 == 0)


def int4_asm_mode(x2: torch.Tensor, w: torch.Tensor) -> int:
    """The GEMV's INT4_ASM for int4 weights that int4_asm_ok admits. Float16 products, two at a
    time, for 16-bit x read as 32-bit words (4-byte aligned rows): over one 32-bit weight word
    per product chain (2: bfloat16 x, 3: float16 x; KILN_INT4_F16=1) or over two, read as 64 bits
    (4 / 5, the default where weight rows are 8-byte aligned; KILN_INT4_F16=2). Otherwise, and
    with KILN_INT4_F16=0, 1: float32 products (_int4_words_f32)."""
    mode = os.environ.get("KILN_INT4_F16", "2")
    if (mode in ("1", "2") and x2.dtype in (torch.bfloat16, torch.float16)
            and x2.data_ptr() % 4 == 0 and x2.stride(0) % 2 == 0 and x2.shape[1] % 16 == 0):
        pair = mode == "2" and w.data_ptr() % 8 == 0 and w.stride(0) % 8 == 0
        return (4 if pair else 2) + (x2.dtype == torch.float16)
    return 1


_MIN_GEMV_BLOCK_N = min([c.kwargs["BLOCK_N"] for c in GEMV_CONFIGS] + [INTERPRET_GEMV["BLOCK_N"]])
