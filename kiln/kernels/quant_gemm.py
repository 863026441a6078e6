"""The quantized GEMM for prefill rows: weight-only tiles dequantized to x's dtype for tl.dot
(the group scale on the float32 product), W8A8 as int8 x int8 or fp8 x fp8 dots with both
scales at the end (_gemm_kernel); its launch candidates by row bucket and its autotuner."""

from __future__ import annotations

import triton
import triton.language as tl

from kiln.kernels.int4_bits import _nibbles_f32
from kiln.kernels.pdl import pdl_start
from kiln.kernels.qmm_common import (_TUNE_KEY, _bytes_f32, _cfg, _load_weight, _split_heuristic,
                                     _split_range)


@triton.jit
def _gemm_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr,
                 M, N, K, stride_xm, stride_wn, stride_sn, stride_sg, stride_om, num_sms, split_hint,
                 WKIND: tl.constexpr, A8: tl.constexpr, GROUP: tl.constexpr, M_BUCKET: tl.constexpr,
                 SPLIT_K, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
                 SWIZZLE: tl.constexpr, PDL: tl.constexpr = False, ROW_BLOCK: tl.constexpr = 1):
    # ROW_BLOCK > 1 (int4): weights stored in blocks of rows, as for _gemv_kernel.
    # Grid (M tiles x N tiles, K splits). Weight-only: the dequantized tile (x's dtype) feeds
    # tl.dot and the group's scale multiplies the float32 product, so scales cost one
    # [BLOCK_M, BLOCK_N] FMA per group. W8A8: int8 x int8 (int32) or fp8 x fp8 (float32) dots,
    # both scales applied once at the end.
    pdl_start(PDL)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Walk SWIZZLE row-tiles together so their weight tiles are reused from L2.
    width = SWIZZLE * grid_n
    first_m = (pid // width) * SWIZZLE
    size_m = tl.minimum(grid_m - first_m, SWIZZLE)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    g_begin, g_end = _split_range(tl.cdiv(K, GROUP), SPLIT_K, pid_k)
    if A8 and WKIND == 3:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for g0 in range(g_begin, g_end, UNROLL):
        for u in tl.static_range(UNROLL):
            g = g0 + u
            valid = g < g_end
            tile = _load_weight(w_ptr, offs_n, g, stride_wn, K, n_mask, valid, GROUP, WKIND,
                                ROW_BLOCK)
            if WKIND == 0:
                # Even / odd k of x meet the low / high nibbles in two half-depth dots (no
                # interleave of the dequantized tile into k order).
                offs_k = g * GROUP + tl.arange(0, GROUP)
                x = tl.load(x_rows + offs_k[None, :],
                            mask=m_mask[:, None] & (offs_k < K)[None, :] & valid, other=0.0)
                xe, xo = tl.split(tl.reshape(x, (BLOCK_M, GROUP // 2, 2)))
                lo, hi = _nibbles_f32(tile)
                s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg,
                            mask=n_mask & valid, other=0.0)
                dot = tl.dot(xe, tl.trans(lo.to(xe.dtype)), input_precision=DOT_PREC)
                dot = tl.dot(xo, tl.trans(hi.to(xo.dtype)), dot, input_precision=DOT_PREC)
                acc += dot * s[None, :]
            else:
                offs_k = g * GROUP + tl.arange(0, GROUP)
                x = tl.load(x_rows + offs_k[None, :],
                            mask=m_mask[:, None] & (offs_k < K)[None, :] & valid, other=0.0)
                if A8:
                    acc += tl.dot(x, tl.trans(tile))
                else:
                    w = _bytes_f32(tile, WKIND).to(x.dtype)
                    s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg,
                                mask=n_mask & valid, other=0.0)
                    acc += tl.dot(x, tl.trans(w), input_precision=DOT_PREC) * s[None, :]
    if A8:
        sx = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
        sw = tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)
        acc = acc.to(tl.float32) * sx[:, None] * sw[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + (pid_k * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :], acc,
                 mask=mask)


# Candidates timed on the first call per (row bucket, N, K, weight kind, group, dtypes).
GEMM_CONFIGS_BY_BUCKET = {
    16: [_cfg(4, 4, BLOCK_M=16, BLOCK_N=64, UNROLL=1, SWIZZLE=1),
         _cfg(4, 4, BLOCK_M=16, BLOCK_N=128, UNROLL=1, SWIZZLE=1),
         _cfg(4, 3, BLOCK_M=16, BLOCK_N=64, UNROLL=2, SWIZZLE=1)],
    64: [_cfg(4, 4, BLOCK_M=64, BLOCK_N=64, UNROLL=1, SWIZZLE=8),
         _cfg(4, 3, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
         _cfg(4, 4, BLOCK_M=32, BLOCK_N=128, UNROLL=1, SWIZZLE=8)],
    256: [_cfg(4, 3, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
          _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
          _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, UNROLL=1, SWIZZLE=8),
          _cfg(4, 4, BLOCK_M=64, BLOCK_N=64, UNROLL=1, SWIZZLE=8)],
    1024: [_cfg(8, 3, BLOCK_M=128, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
           _cfg(8, 3, BLOCK_M=128, BLOCK_N=256, UNROLL=1, SWIZZLE=8),
           _cfg(8, 4, BLOCK_M=128, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
           _cfg(4, 3, BLOCK_M=64, BLOCK_N=256, UNROLL=1, SWIZZLE=8),
           _cfg(4, 4, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
           _cfg(4, 3, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8)],
}
# Weight-only tiles beyond 64 x 128 spill registers on sm_90 (the dequantized tile lives in
# registers next to the accumulator; seen in the cubins); W8A8 tiles do not dequantize.
GEMM_CONFIGS = [c for cs in GEMM_CONFIGS_BY_BUCKET.values() for c in cs]
# The CPU interpreter's one configuration (as fma_gemv.INTERPRET_GEMV).
INTERPRET_GEMM = {"BLOCK_M": 16, "BLOCK_N": 32, "UNROLL": 2, "SWIZZLE": 2}


def m_bucket(m: int) -> int:
    """The row-count bucket that selects GEMM candidates (16, 64, 256 or 1024 = anything larger)."""
    for b in (16, 64, 256):
        if m <= b:
            return b
    return 1024


def _gemm_prune(configs, named_args, **kwargs):
    """Keep the candidates written for this call's M bucket (weight-only: no spilling tiles)."""
    wanted = GEMM_CONFIGS_BY_BUCKET[kwargs["M_BUCKET"]]
    keep = [c for c in configs if any(c is w for w in wanted)]
    if not kwargs["A8"]:
        keep = [c for c in keep if c.kwargs["BLOCK_M"] <= 64 and c.kwargs["BLOCK_N"] <= 128] or keep
    return keep


_gemm_split = triton.heuristics({"SPLIT_K": _split_heuristic})(_gemm_kernel)
_gemm_tuned = triton.autotune(GEMM_CONFIGS,
                              key=_TUNE_KEY + ["M_BUCKET"],
                              prune_configs_by={"early_config_prune": _gemm_prune})(_gemm_split)
