"""Triton building blocks of the paged attention kernels (prefill in kiln.kernels.attention,
decode in kiln.kernels.decode_attention): paged K/V addressing, fp8 cache values widened to
float16 (PTX on sm_89+), and the online-softmax loop over a range of keys (_attend_range)."""

from __future__ import annotations

import triton
import triton.language as tl

from kiln.kernels import E4M3X4_F16_PTX


# Scores are kept in the log2 domain (scale folded with log2(e)) so the softmax uses exp2.
_LOG2E = 1.4426950408889634
# Running maxima start finite so that a fully masked tile gives exp2(-inf - m) = 0, never NaN.
_NEG_START = tl.constexpr(-1.0e30)


@triton.jit
def _kv_offsets(block_table_row, toks, valid, kv_head, cache_block_stride, cache_slot_stride,
                cache_head_stride, BLOCK_SIZE: tl.constexpr):
    """Element offsets of tokens `toks` of one sequence (and one KV head) in the paged cache.

    `valid` masks the block-table read (None: every token is inside the context).
    """
    blocks = tl.load(block_table_row + toks // BLOCK_SIZE, mask=valid).to(tl.int64)
    return (blocks * cache_block_stride + (toks % BLOCK_SIZE) * cache_slot_stride
            + kv_head * cache_head_stride)


# Four e4m3 codes of a 32-bit word -> four float16 (sm_89+).
_E4M3X4_F16_ASM = tl.constexpr(E4M3X4_F16_PTX)


@triton.jit
def _widen_fp8(words):
    """int32 words [R, C] of four e4m3 codes each -> float16 [R, 4 C] in memory order, exact
    (CUDA sm_89+).

    Taking the tile as 32-bit words keeps the conversion in the loaded layout, so the dots see
    plain 16-bit operands, which move into the operand layouts by shared-memory matrix loads.
    With Triton's own conversion the operand layouts follow the 8-bit origin: 8-bit tiles are
    read byte by byte or every matrix instruction needs register copies.
    """
    b0, b1, b2, b3 = tl.inline_asm_elementwise(_E4M3X4_F16_ASM, "=h,=h,=h,=h,r", [words],
                                               dtype=(tl.float16,) * 4, is_pure=True, pack=1)
    x = tl.join(tl.join(b0, b2), tl.join(b1, b3))
    return tl.reshape(x, (words.shape[0], words.shape[1] * 4))


@triton.jit
def _words(ptr, offs, HEAD_DIM: tl.constexpr):
    """Pointers to the 32-bit words of the 8-bit rows at element offsets offs: [len, HEAD_DIM / 4]."""
    return ((ptr + offs).to(tl.pointer_type(tl.int32))[:, None]
            + tl.arange(0, HEAD_DIM // 4)[None, :])


@triton.jit
def _widened_tile(ptr, offs, valid, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The e4m3 rows at element offsets offs, widened to float16 [len, HEAD_DIM] (_widen_fp8);
    with MASKED, rows where valid is false read as zeros."""
    if MASKED:
        return _widen_fp8(tl.load(_words(ptr, offs, HEAD_DIM), mask=valid[:, None], other=0))
    return _widen_fp8(tl.load(_words(ptr, offs, HEAD_DIM)))


@triton.jit
def _fp8_dot_q(q):
    """q for the dots against an fp8 cache: float16 for any 16-bit q (exact for bfloat16 values
    of magnitude 6.1e-5 .. 65504, clamped beyond; smaller ones keep float16's subnormal steps,
    which move a score by under 1e-7 of |k|), float32 unchanged."""
    if q.dtype != tl.float32:
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
    return q


@triton.jit
def _attend_range(q, m, l, acc, q_pos, cache_ptr, block_table_row, kv_head, k_lo, k_hi, window,
                  qk_scale, cache_kv_stride, cache_block_stride, cache_slot_stride, cache_head_stride,
                  HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  MASKED: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr,
                  KV_FP8: tl.constexpr, FP8_ASM: tl.constexpr = False,
                  ONE_QUERY: tl.constexpr = False, LATE_V: tl.constexpr = False,
                  KEYS_WIDE: tl.constexpr = False):
    """Online-softmax update of (m, l, acc) with keys k_lo .. k_hi - 1 (k_lo a tile multiple).

    With MASKED false every key in the range must be visible to every query row (no mask work).
    With KV_FP8 the cache holds unscaled e4m3 values: they widen exactly to q's dtype, and the
    caller folds k_scale into qk_scale and multiplies the final acc by v_scale.
    ONE_QUERY: a single query row at position k_hi - 1 (decode), so the causal mask is the
    range's end. LATE_V (with FP8_ASM): each tile's values are read after its softmax rather than
    beside its keys, so a tile's keys and values are never in registers together.
    KEYS_WIDE: the scores come from K Q^T, transposed (keys the dot's wide operand, the few query
    rows the narrow one), rather than from Q K^T.
    """
    dims = tl.arange(0, HEAD_DIM)
    for start in range(k_lo, k_hi, BLOCK_N):
        toks = start + tl.arange(0, BLOCK_N)
        if MASKED:
            valid = toks < k_hi
            offs = _kv_offsets(block_table_row, toks, valid, kv_head, cache_block_stride,
                               cache_slot_stride, cache_head_stride, BLOCK_SIZE)
            if FP8_ASM:
                k = _widened_tile(cache_ptr, offs, valid, True, HEAD_DIM)
                if not LATE_V:
                    v = _widened_tile(cache_ptr + cache_kv_stride, offs, valid, True, HEAD_DIM)
            else:
                k = tl.load(cache_ptr + offs[:, None] + dims[None, :], mask=valid[:, None],
                            other=0.0)
                v = tl.load(cache_ptr + cache_kv_stride + offs[:, None] + dims[None, :],
                            mask=valid[:, None], other=0.0)
        else:
            offs = _kv_offsets(block_table_row, toks, None, kv_head, cache_block_stride,
                               cache_slot_stride, cache_head_stride, BLOCK_SIZE)
            if FP8_ASM:
                k = _widened_tile(cache_ptr, offs, None, False, HEAD_DIM)
                if not LATE_V:
                    v = _widened_tile(cache_ptr + cache_kv_stride, offs, None, False, HEAD_DIM)
            else:
                k = tl.load(cache_ptr + offs[:, None] + dims[None, :])
                v = tl.load(cache_ptr + cache_kv_stride + offs[:, None] + dims[None, :])
        if KV_FP8 and not FP8_ASM:
            # Every e4m3 value is exact in float16/bfloat16/float32, so the dots see the cached
            # values unrounded; the scales are applied in float32 outside the dots. A 16-bit q
            # arrives as float16 (_fp8_dot_q): e4m3 widens to float16 two values per
            # instruction, while bfloat16 would take a further quarter-rate conversion each.
            # (FP8_ASM: _widen_fp8 already gave float16.)
            k = k.to(q.dtype)
            v = v.to(q.dtype)
        if KEYS_WIDE:
            # With q as the wide operand, sm_90 reads its (loop-invariant) fragments from shared
            # memory every tile and gathers them with register moves (about a quarter of the fp8
            # decode loop's instructions); as the narrow operand its fragments need no gathering.
            s = tl.trans(tl.dot(k, tl.trans(q), input_precision=DOT_PREC)) * qk_scale
        else:
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASKED and ONE_QUERY:
            # one query at the last position: every key below k_hi is causally visible
            visible = valid
            if USE_WINDOW:
                visible = visible & (toks > q_pos - window)
            s = tl.where(visible[None, :], s, float("-inf"))
        elif MASKED:
            visible = (toks[None, :] <= q_pos[:, None]) & valid[None, :]
            if USE_WINDOW:
                visible = visible & (toks[None, :] > q_pos[:, None] - window)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        if FP8_ASM and LATE_V:
            if MASKED:
                v = _widened_tile(cache_ptr + cache_kv_stride, offs, valid, True, HEAD_DIM)
            else:
                v = _widened_tile(cache_ptr + cache_kv_stride, offs, None, False, HEAD_DIM)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m = m_new
    return m, l, acc


# The metadata arguments change from step to step (a sub-batch's views start anywhere; the block
# table's width follows the longest context): specializing on their alignment or divisibility
# would compile new variants while serving. They are read as scalars, so nothing is lost.
_META_PTRS = ("block_tables_ptr", "seq_lens_ptr", "query_start_ptr")
