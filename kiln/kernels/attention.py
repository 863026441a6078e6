"""Paged attention over each sequence's context in the paged KV cache (and the reference cache write).

One call handles a flat batch mixing prefill chunks (several new tokens that attend to cached context
and to each other causally) and decode tokens (one new token each).

FP8 KV cache: a cache of dtype float8_e4m3fn holds ``clamp(k * (1 / k_scale), -448, 448)`` rounded
to e4m3 (likewise v with v_scale), with one (k_scale, v_scale) pair of Python floats per layer; a read
dequantizes ``fp8.to(float32) * scale``. Scales are ignored for caches of any other dtype. Without
calibrated scales (a checkpoint run with an fp8 cache) the scales are 1.0, as in vLLM.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kiln.kernels import E4M3X4_F16_PTX, pdl_args, use_triton
from kiln.kernels.pdl import pdl_start
from kiln.kernels.quant_act import (QUANT_PAD_ABOVE, QuantizedRows, quantize_rows,
                                    quantized_rows_buffers, store_row_quantized)
from kiln.kernels.qmm_common import SPLIT_LOCKS, split_locks
from kiln.kernels.prefill_fresh import (fresh_prefill_attention, fresh_prefill_ok,
                                        fresh_prefill_supports)
from kiln.layers.forward_context import AttentionMetadata

try:  # Gluon (Triton's explicit-layout dialect) as Triton 3.6 has it
    from kiln.kernels import decode_gluon
except (ImportError, AttributeError):  # pragma: no cover - older Triton
    decode_gluon = None

FP8_KV_DTYPE = torch.float8_e4m3fn
# Largest finite float8_e4m3fn value: quantized K/V saturate here instead of becoming NaN.
FP8_E4M3_MAX = 448.0


def is_fp8_kv_cache(kv_cache: torch.Tensor) -> bool:
    """Whether ``kv_cache`` stores scaled float8_e4m3fn K/V (the scales then apply)."""
    return kv_cache.dtype == FP8_KV_DTYPE


def quantize_kv_ref(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``clamp(x * (1 / scale), -448, 448)`` in float32 (the reciprocal of the float32 scale
    correctly rounded), rounded to float8_e4m3fn (nearest, ties to even)."""
    # 0-dim tensors on x's device, not Python scalars: the reciprocal is one IEEE float32
    # division, exactly as the kernels compute it.
    inv = (torch.ones((), dtype=torch.float32, device=x.device)
           / torch.full((), scale, dtype=torch.float32, device=x.device))
    return (x.float() * inv).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_KV_DTYPE)


def dequantize_kv_ref(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x.to(float32) * scale`` for a float8_e4m3fn tensor (exact conversion, one rounding)."""
    return x.float() * torch.full((), scale, dtype=torch.float32, device=x.device)


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Reference cache write: token t's K/V go to flat slot slot_mapping[t] (-1: skip).

    k, v: [T, Hk, D]; kv_cache: [2, num_blocks, block_size, Hk, D], contiguous. An fp8 cache
    stores ``quantize_kv_ref(k, k_scale)`` / ``quantize_kv_ref(v, v_scale)``; other caches ignore
    the scales and store k/v cast to their dtype.
    """
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, num_kv_heads, head_dim)
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, k, v = slots[keep], k[keep], v[keep]
    if is_fp8_kv_cache(kv_cache):
        # index_copy_ has no float8 kernels: copy the bytes through uint8 views.
        flat = flat.view(torch.uint8)
        flat[0].index_copy_(0, slots, quantize_kv_ref(k, k_scale).view(torch.uint8))
        flat[1].index_copy_(0, slots, quantize_kv_ref(v, v_scale).view(torch.uint8))
        return
    flat[0].index_copy_(0, slots, k.to(kv_cache.dtype))
    flat[1].index_copy_(0, slots, v.to(kv_cache.dtype))


def _gather_ref(kv_cache: torch.Tensor, which: int, blocks: torch.Tensor, seq_len: int,
                scale: float) -> torch.Tensor:
    """Keys (which=0) or values (1) of one sequence's first seq_len tokens, float32 [S, Hk, D]."""
    _, _, _, num_kv_heads, head_dim = kv_cache.shape
    if not is_fp8_kv_cache(kv_cache):
        return kv_cache[which, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
    raw = kv_cache.view(torch.uint8)[which, blocks].view(FP8_KV_DTYPE)
    return dequantize_kv_ref(raw.reshape(-1, num_kv_heads, head_dim)[:seq_len], scale)


def paged_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                        scale: float, sliding_window: int | None = None, k_scale: float = 1.0,
                        v_scale: float = 1.0) -> torch.Tensor:
    """Reference attention over the paged cache, computed in float32.

    q: [T, Hq, D] for the new tokens (their K/V must already be in the cache). Query i of a
    sequence with context length S and q_len new tokens sits at position S - q_len + i and sees
    keys at positions j <= that position (and, with a sliding window W, j > position - W).
    Hq must be a multiple of the cache's Hk (grouped-query attention). An fp8 cache is read as
    ``fp8.to(float32) * k_scale`` (keys) and ``* v_scale`` (values).
    """
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_tokens, num_heads, _ = q.shape
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    start = 0
    for b, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
        if q_len == 0:
            continue
        num_blocks = -(-seq_len // block_size)
        blocks = meta.block_tables[b, :num_blocks].long()
        keys = _gather_ref(kv_cache, 0, blocks, seq_len, k_scale)
        values = _gather_ref(kv_cache, 1, blocks, seq_len, v_scale)
        qb = q[start:start + q_len].float().view(q_len, num_kv_heads, group, head_dim)
        scores = torch.einsum("qhgd,shd->hgqs", qb, keys) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        visible = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            visible &= k_pos[None, :] > q_pos[:, None] - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        ob = torch.einsum("hgqs,shd->qhgd", probs, values).reshape(q_len, num_heads, head_dim)
        out[start:start + q_len] = ob.to(q.dtype)
        start += q_len
    assert start == num_tokens, "query_lens_cpu does not cover q"
    return out


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


@triton.jit(do_not_specialize=["block_table_stride"], do_not_specialize_on_alignment=_META_PTRS)
def _prefill_kernel(q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr, out_ptr,
                    q_tok_stride, q_head_stride, out_tok_stride, out_head_stride,
                    cache_kv_stride, cache_block_stride, cache_slot_stride, cache_head_stride,
                    block_table_stride, qk_scale, v_scale, window, group,
                    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr,
                    KV_FP8: tl.constexpr, PDL: tl.constexpr = False):
    # Program (row tile, kv head, sequence). A tile's rows are (query token, head of the group)
    # pairs, token-major, so K/V are read once for the whole group. Tiles run largest-first.
    pdl_start(PDL)
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    row0 = tile * BLOCK_M
    if row0 >= q_len * group:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    toks = rows // group
    heads = kv_head * group + rows % group
    row_ok = toks < q_len
    dims = tl.arange(0, HEAD_DIM)
    tok_idx = (q_start + toks).to(tl.int64)
    q = tl.load(q_ptr + tok_idx[:, None] * q_tok_stride + heads[:, None] * q_head_stride + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    if KV_FP8:
        q = _fp8_dot_q(q)
    ctx_len = seq_len - q_len
    q_pos = ctx_len + toks
    min_pos = ctx_len + row0 // group
    max_pos = ctx_len + tl.minimum((row0 + BLOCK_M - 1) // group, q_len - 1)
    k_hi = max_pos + 1
    if USE_WINDOW:
        k_lo = tl.maximum(min_pos - window + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(max_pos - window + 1, 0), BLOCK_N) * BLOCK_N
    else:
        k_lo = 0
        full_lo = 0
    # Keys below full_hi (and from full_lo) are visible to every row: no masks there.
    full_hi = (min_pos + 1) // BLOCK_N * BLOCK_N
    no_full = full_hi <= full_lo
    full_lo = tl.where(no_full, k_lo, full_lo)
    full_hi = tl.where(no_full, k_lo, full_hi)

    m = tl.full([BLOCK_M], _NEG_START, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    m, l, acc = _attend_range(q, m, l, acc, q_pos, cache_ptr, block_table_row, kv_head, k_lo,
                              full_lo, window, qk_scale, cache_kv_stride, cache_block_stride,
                              cache_slot_stride, cache_head_stride, HEAD_DIM, BLOCK_SIZE, BLOCK_N,
                              True, USE_WINDOW, DOT_PREC, KV_FP8, False)
    m, l, acc = _attend_range(q, m, l, acc, q_pos, cache_ptr, block_table_row, kv_head, full_lo,
                              full_hi, window, qk_scale, cache_kv_stride, cache_block_stride,
                              cache_slot_stride, cache_head_stride, HEAD_DIM, BLOCK_SIZE, BLOCK_N,
                              False, USE_WINDOW, DOT_PREC, KV_FP8, False)
    m, l, acc = _attend_range(q, m, l, acc, q_pos, cache_ptr, block_table_row, kv_head, full_hi,
                              k_hi, window, qk_scale, cache_kv_stride, cache_block_stride,
                              cache_slot_stride, cache_head_stride, HEAD_DIM, BLOCK_SIZE, BLOCK_N,
                              True, USE_WINDOW, DOT_PREC, KV_FP8, False)
    if KV_FP8:
        acc = acc * v_scale
    l = tl.where(l > 0.0, l, 1.0)
    out = acc / l[:, None]
    tl.store(out_ptr + tok_idx[:, None] * out_tok_stride + heads[:, None] * out_head_stride
             + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _partitions(seq_len, window, max_partitions, BLOCK_N: tl.constexpr, USE_WINDOW: tl.constexpr):
    """A sequence's partitions of its visible keys: (first key, keys per partition, count).

    The keys from `first` (0, or the window's first key rounded down to a tile) to seq_len are cut
    into at most max_partitions runs of whole BLOCK_N tiles, as even as tiles allow: the split
    follows each sequence's own length on the device, so a short context still spreads over many
    programs in a graph captured for max_model_len.
    """
    first = 0
    if USE_WINDOW:
        first = tl.maximum(seq_len - window, 0) // BLOCK_N * BLOCK_N
    span = seq_len - first
    keys = tl.maximum(tl.cdiv(tl.cdiv(span, max_partitions), BLOCK_N), 1) * BLOCK_N
    return first, keys, tl.cdiv(span, keys)


@triton.jit(do_not_specialize=["block_table_stride", "max_partitions"],
            do_not_specialize_on_alignment=_META_PTRS)
def _decode_partition_kernel(q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr,
                             out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
                             q_tok_stride, q_head_stride, out_tok_stride, out_head_stride,
                             cache_kv_stride, cache_block_stride, cache_slot_stride,
                             cache_head_stride, block_table_stride, qk_scale, v_scale, window,
                             num_q_heads, max_partitions, group,
                             BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
                             BLOCK_SIZE: tl.constexpr,
                             BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
                             USE_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr,
                             KV_FP8: tl.constexpr, PDL: tl.constexpr = False,
                             FP8_ASM: tl.constexpr = False, LATE_V: tl.constexpr = False,
                             lock_ptr=None,
                             FUSED_REDUCE: tl.constexpr = False, GROUP_P2: tl.constexpr = 1,
                             MERGE_P: tl.constexpr = 1, codes_ptr=None, scales_ptr=None,
                             codes_stride=0, QUANT_ROW: tl.constexpr = 0,
                             KEYS_WIDE: tl.constexpr = False):
    # Program (sequence, kv head, partition): one query token per sequence, all `group` query
    # heads of the kv head at once (rows of the dot), over one partition of the sequence's keys
    # (_partitions). Sizes are read on the device, so the grid only depends on num_seqs and
    # max_partitions; programs past a sequence's partition count exit at once.
    # FUSED_REDUCE (not SINGLE): the last of a (sequence, kv head)'s partitions to arrive
    # (counter lock_ptr[seq * kv heads + kv_head]) merges their partial results for the group's
    # heads itself (_merge_partitions, GROUP_P2 >= group heads, MERGE_P partitions per step)
    # and re-arms the counter: no reduce launch. QUANT_ROW > 0 (with FUSED_REDUCE; a power of two
    # >= num_q_heads * HEAD_DIM, out's heads contiguous): the last kv head of a sequence to be
    # merged (counter lock_ptr[num_seqs * kv heads + seq]) also quantizes the token's whole
    # output row per token to fp8 codes (codes_ptr, row stride codes_stride) and scale
    # (scales_ptr), the bits quant_per_token gives for out: o_proj's quantization launch saved.
    pdl_start(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    if SINGLE and not USE_WINDOW:
        # One partition from key 0: a constant start lets the compiler see every key position
        # is non-negative (shifts, not signed divisions, for the block-table arithmetic).
        lo = 0
        hi = seq_len
        count = 1
    else:
        first, keys, count = _partitions(seq_len, window, max_partitions, BLOCK_N, USE_WINDOW)
        lo = first + part * keys  # a tile multiple: keys before the window are masked
        hi = tl.minimum(lo + keys, seq_len)
    if (q_len == 0) | (part >= count):
        return
    g = tl.arange(0, BLOCK_G)
    heads = kv_head * group + g
    row_ok = g < group
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + q_start.to(tl.int64) * q_tok_stride + heads[:, None] * q_head_stride
                + dims[None, :], mask=row_ok[:, None], other=0.0)
    if KV_FP8:
        q = _fp8_dot_q(q)
    m = tl.full([BLOCK_G], _NEG_START, tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    # Masks are cheap next to the key/value loads here, so every tile takes the masked path.
    m, l, acc = _attend_range(q, m, l, acc, seq_len - 1, cache_ptr, block_table_row, kv_head,
                              lo, hi, window, qk_scale, cache_kv_stride,
                              cache_block_stride, cache_slot_stride, cache_head_stride, HEAD_DIM,
                              BLOCK_SIZE, BLOCK_N, True, USE_WINDOW, DOT_PREC, KV_FP8, FP8_ASM,
                              True, LATE_V, KEYS_WIDE)
    if KV_FP8:
        # acc is linear in the values, so partial results can be scaled before the reduce.
        acc = acc * v_scale
    if SINGLE:
        out = acc / l[:, None]
        tl.store(out_ptr + q_start.to(tl.int64) * out_tok_stride + heads[:, None] * out_head_stride
                 + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
        if QUANT_ROW > 0:
            # the last kv head of the sequence to finish quantizes its token's whole row
            _quantize_row_when_last(lock_ptr + seq, out_ptr, codes_ptr, scales_ptr, q_start,
                                    codes_stride, num_q_heads * HEAD_DIM, QUANT_ROW)
    else:
        idx = (seq.to(tl.int64) * num_q_heads + heads) * max_partitions + part
        tl.store(part_max_ptr + idx, m, mask=row_ok)
        tl.store(part_sum_ptr + idx, l, mask=row_ok)
        tl.store(part_acc_ptr + idx[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        if FUSED_REDUCE:
            tl.debug_barrier()  # every thread's partial stores precede the release below
            lock = lock_ptr + seq * tl.num_programs(1) + kv_head
            arrived = tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu")
            if arrived == count - 1:
                tl.debug_barrier()
                _merge_partitions(out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, seq, q_start,
                                  kv_head * group, group, count, num_q_heads, max_partitions,
                                  out_tok_stride, out_head_stride, GROUP_P2, HEAD_DIM, MERGE_P,
                                  True)
                tl.atomic_xchg(lock, 0, sem="relaxed", scope="gpu")
                if QUANT_ROW > 0:
                    _quantize_row_when_last(
                        lock_ptr + tl.num_programs(0) * tl.num_programs(1) + seq, out_ptr,
                        codes_ptr, scales_ptr, q_start, codes_stride, num_q_heads * HEAD_DIM,
                        QUANT_ROW)


@triton.jit
def _quantize_row_when_last(row_lock, out_ptr, codes_ptr, scales_ptr, q_start, codes_stride,
                            width, QUANT_ROW: tl.constexpr):
    """Count this program's part of token q_start's output row (its heads, stored by it) at
    row_lock; the last of the row's tl.num_programs(1) parts to arrive quantizes the whole row
    per token (the bits quant_per_token gives) and re-arms the counter. The row's heads are
    contiguous in out (row start q_start * width)."""
    tl.debug_barrier()  # this program's outputs precede the release below
    merged = tl.atomic_add(row_lock, 1, sem="acq_rel", scope="gpu")
    if merged == tl.num_programs(1) - 1:
        tl.debug_barrier()
        cols = tl.arange(0, QUANT_ROW)
        ok = cols < width
        row = q_start.to(tl.int64)
        # other programs wrote most of the row: read it from L2 (.cg), past this SM's L1
        y = tl.load(out_ptr + row * width + cols, mask=ok, other=0.0,
                    cache_modifier=".cg").to(tl.float32)
        store_row_quantized(y, codes_ptr, scales_ptr, row, cols, ok, codes_stride, False)
        tl.atomic_xchg(row_lock, 0, sem="relaxed", scope="gpu")


@triton.jit
def _merge_partitions(out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, seq, q_start, head0,
                      heads, count, num_q_heads, max_partitions, out_tok_stride, out_head_stride,
                      ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr,
                      OTHER_SMS: tl.constexpr):
    """Merge partitions [0, count) of query heads head0 .. head0 + heads - 1 (ROWS >= heads, a
    power of two) of sequence seq into their outputs: each partition's softmax statistics (max
    and sum, log2 domain) and value sums rescaled to the running maximum, BLOCK_P partitions
    per step. OTHER_SMS: the partials were written by other programs of the same launch, so
    they are read from L2 (.cg), past this SM's L1."""
    r = tl.arange(0, ROWS)
    head = head0 + r
    head_ok = r < heads
    base = (seq.to(tl.int64) * num_q_heads + head) * max_partitions
    dims = tl.arange(0, HEAD_DIM)
    run_max = tl.full([ROWS], _NEG_START, tl.float32)
    total = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    cache: tl.constexpr = ".cg" if OTHER_SMS else ""
    for p0 in range(0, count, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        ok = head_ok[:, None] & (parts < count)[None, :]
        idx = base[:, None] + parts[None, :]
        pmax = tl.load(part_max_ptr + idx, mask=ok, other=float("-inf"), cache_modifier=cache)
        psum = tl.load(part_sum_ptr + idx, mask=ok, other=0.0, cache_modifier=cache)
        pacc = tl.load(part_acc_ptr + idx[:, :, None] * HEAD_DIM + dims[None, None, :],
                       mask=ok[:, :, None], other=0.0, cache_modifier=cache)
        new_max = tl.maximum(run_max, tl.max(pmax, axis=1))
        rescale = tl.exp2(run_max - new_max)
        w = tl.exp2(pmax - new_max[:, None])
        total = total * rescale + tl.sum(w * psum, axis=1)
        acc = acc * rescale[:, None] + tl.sum(pacc * w[:, :, None], axis=1)
        run_max = new_max
    out = acc / total[:, None]
    tl.store(out_ptr + q_start.to(tl.int64) * out_tok_stride + head[:, None] * out_head_stride
             + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None])


@triton.jit(do_not_specialize=["max_partitions"],
            do_not_specialize_on_alignment=["seq_lens_ptr", "query_start_ptr"])
def _decode_reduce_kernel(seq_lens_ptr, query_start_ptr, out_ptr, part_acc_ptr, part_max_ptr,
                          part_sum_ptr, out_tok_stride, out_head_stride, window, num_q_heads,
                          max_partitions, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_P: tl.constexpr, USE_WINDOW: tl.constexpr, PDL: tl.constexpr = False):
    # Program (sequence, query head): merge the partitions' partial softmax results.
    pdl_start(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    if q_len == 0:
        return
    # The partitions the partition kernel ran (BLOCK_N: its tile, which sets their bounds).
    _, _, last = _partitions(seq_len, window, max_partitions, BLOCK_N, USE_WINDOW)
    _merge_partitions(out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, seq, q_start, head, 1,
                      last, num_q_heads, max_partitions, out_tok_stride, out_head_stride, 1,
                      HEAD_DIM, BLOCK_P, False)


def _triton_ok(q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Shapes the kernels handle: power-of-two head_dim >= 16, a cache of q's dtype or fp8."""
    head_dim = q.shape[-1]
    return (use_triton(q) and q.dim() == 3 and q.shape[0] > 0 and q.stride(-1) == 1
            and kv_cache.is_contiguous() and (kv_cache.dtype == q.dtype or is_fp8_kv_cache(kv_cache))
            and head_dim >= 16 and triton.next_power_of_2(head_dim) == head_dim
            and q.shape[1] % kv_cache.shape[3] == 0)


def fp8_asm_ok(q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Whether decode attention widens an fp8 cache's values through PTX (_widen_fp8): CUDA
    sm_89+, a 16-bit q, a 4-byte aligned cache (it is read as 32-bit words);
    KILN_FP8_KV_ASM=0 keeps Triton's own conversion."""
    return (is_fp8_kv_cache(kv_cache) and q.is_cuda and q.dtype != torch.float32
            and kv_cache.data_ptr() % 4 == 0 and _capability(q.device) >= (8, 9)
            and os.environ.get("KILN_FP8_KV_ASM", "1") == "1")


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _decode_partitions(num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int,
                       block_n: int) -> int:
    """How many partitions (the launch grid's third size) each sequence's keys may be split
    into: as many as give about two programs per SM, so a large batch runs one partition per
    (sequence, kv head) and skips the reduce, and never more than max_seq_len has tiles.

    Depends only on values fixed for a captured decode graph (num_seqs, max_seq_len, which a
    graph fixes to max_model_len). The count must not follow max_seq_len alone: a batch of 512
    short sequences would launch partitions that are nearly all empty and a reduce over them
    (22% of the 1000 x 128/128 run's GPU time in attention on an H200, when it did). The
    kernels cut each sequence's own keys into at most that many runs of whole tiles
    (_partitions), so at batch 1 a 200-key context spreads over four 64-key partitions where
    a fixed 256-key partition size gave it one.
    """
    programs = num_seqs * num_kv_heads
    return min(max(1, -(-2 * num_sms // programs)), triton.cdiv(max_seq_len, block_n))


# Decode launches whose (sequence, kv head) programs alone give two per SM run one partition per
# sequence; for them, 64-key tiles on two warps with three stages measured faster than 128-key
# tiles on four warps: 199-203 against 231 us at 1000 sequences of 192 keys (bf16 cache), 208
# against 250 (fp8), 59 against 64-71 at 256 sequences; 2-4% slower at 256 keys, where 128-key
# tiles waste nothing (benchmarks/kernels/sweep_decode_large_h200.json).
LARGE_DECODE_TILE = dict(block_n=64, num_warps=2, num_stages=3)
# Smaller batches split each context into partitions (_partitions), whose whole tiles set how far
# a short context spreads: timed as in a decode graph (max_seq_len 8192) on an H200, 64-key tiles
# on four warps took 6.30 / 7.55 / 8.76 / 14.52 us at batch 1 with 200 / 400 / 1000 / 4096 keys,
# against 7.01 / 8.59 / 9.09 / 14.15 for 128-key tiles, and 45.1 against 49.0 at 32 sequences of
# 1000 keys (benchmarks/kernels/sweep_decode_graph_h200.json).
SMALL_DECODE_TILE = dict(block_n=64, num_warps=4, num_stages=2)


def decode_tile(large: bool) -> dict:
    """The decode launch's tile: LARGE_DECODE_TILE or SMALL_DECODE_TILE, unless
    KILN_ATTN_LARGE_TILE / KILN_ATTN_SMALL_TILE give "block_n,num_warps,num_stages" (A/B runs).

    The K/V loads sit behind a block-table load, so Triton's pipeliner (3.6) needs five stages
    before it double-buffers them: up to four, each tile's loads are issued after the tile
    before it is consumed and waited for in full (one buffer; sm_90 SASS of
    benchmarks/kernels/compile_sm90.py)."""
    name = "KILN_ATTN_LARGE_TILE" if large else "KILN_ATTN_SMALL_TILE"
    flag = os.environ.get(name, "")
    if not flag:
        return LARGE_DECODE_TILE if large else SMALL_DECODE_TILE
    try:
        block_n, num_warps, num_stages = (int(v) for v in flag.split(","))
    except ValueError:
        raise ValueError(f"{name}={flag!r}: expected block_n,num_warps,num_stages") from None
    return dict(block_n=block_n, num_warps=num_warps, num_stages=num_stages)


def keys_wide_enabled() -> bool:
    """KILN_ATTN_KEYS_WIDE=1 (the default; 0 turns it off): decode launches with
    LARGE_DECODE_TILE compute their scores as K Q^T (_attend_range's KEYS_WIDE). On an H200 at
    1000 sequences, one partition each, us per layer: fp8 cache 116.8 -> 109.9 at 128 keys,
    163.1 -> 151.7 at 192, 204.2 -> 189.2 at 256; bf16 cache 205.9 -> 198.1 at 192. Split
    partitions (the small tile) are slower with it (32 x 1000 keys: 34.9 -> 41.7), so they keep
    Q K^T (benchmarks/h200-quant/run-u, call 4)."""
    return os.environ.get("KILN_ATTN_KEYS_WIDE", "1") == "1"


def fused_reduce_enabled() -> bool:
    """KILN_ATTN_FUSED_REDUCE=1 (the default; 0 launches the reduce kernel): split decode
    attention merges its partitions in the partition kernel (the last program of each sequence
    and kv head to finish). On the H200, 8B batch 1: fp8 338.5 -> 342.1 tok/s, bf16 233.4 ->
    235.0; 1000 x 128/128 unchanged (26,026 / 25,986) (benchmarks/h200-quant/README.md, run-j)."""
    return os.environ.get("KILN_ATTN_FUSED_REDUCE", "1") == "1"


def late_values_enabled() -> bool:
    """KILN_ATTN_LATE_V=1 (the default; 0 reads them beside the keys): fp8-cache decode launches
    with LARGE_DECODE_TILE read each tile's values after the tile's softmax (_attend_range's
    LATE_V). Keys and values are then never in registers together: 161 registers a thread
    instead of 199 (sm_90), three warps per scheduler instead of two, five programs per SM
    instead of four. On an H200 at 1000 sequences, one partition each: 139.1 -> 121.3 us at 128
    keys, 189.7 -> 163.1 at 192, 234.1 -> 204.5 at 256. Smaller batches (the small tile, split
    partitions) are as fast or 2-4% slower with it (5.43 -> 5.62 us at 1 x 400 keys as a decode
    graph runs it), so they keep the values beside the keys
    (benchmarks/kernels/proto_fp8_decode_h200.json)."""
    return os.environ.get("KILN_ATTN_LATE_V", "1") == "1"


def gluon_decode_enabled() -> bool:
    """KILN_ATTN_GLUON=1 (the default; 0 keeps the Triton kernel): large decode launches over an
    fp8 cache (one partition per sequence, no sliding window, head_dim 128, at most 16 query
    heads per kv head) run kiln.kernels.decode_gluon's one-warp kernels. On an H200, us per
    layer, Triton against the transposed Gluon kernel (gluon_decode_tile's default): 1000
    sequences over 129..256 keys 163.1 -> 111.6, 1000 x 192 152.4 -> 114.2, 256 x 1024
    193.3 -> 146.1, 64 x 4000 181.6 -> 133.8; the fp8 8B engine at 1000 x 128/128 31,078 ->
    32,768 / 32,836 output tok/s (benchmarks/h200-quant/README.md, run-w call 3)."""
    return decode_gluon is not None and os.environ.get("KILN_ATTN_GLUON", "1") == "1"


def gluon_decode_tile() -> tuple[int, int, bool]:
    """The Gluon decode launch's (block_n, stages, keys_m): decode_gluon.DEFAULT_TILE, unless
    KILN_ATTN_GLUON_TILE gives "block_n,stages,keys_m" (A/B runs; keys_m 0 or 1)."""
    flag = os.environ.get("KILN_ATTN_GLUON_TILE", "")
    if not flag:
        return decode_gluon.DEFAULT_TILE
    try:
        block_n, stages, keys_m = (int(v) for v in flag.split(","))
    except ValueError:
        raise ValueError(f"KILN_ATTN_GLUON_TILE={flag!r}: expected block_n,stages,keys_m") from None
    return block_n, stages, bool(keys_m)


def quant_out_enabled() -> bool:
    """KILN_ATTN_QUANT_OUT=1: with KILN_PRODUCER_QUANT, fp8 engines' attention also quantizes
    o_proj's input (in the decode kernel where it merges its partitions, or over an fp8 cache
    where it runs one partition per sequence: the Triton kernel, so such batches then leave the
    Gluon kernel; see paged_attention). Off: no gain at batch 1 (346.1 against 346.4 tok/s,
    run-j); at 1000 x 128/128 fp8 a kernel variant compiled after start-up with it (26,527
    against about 30,300 tok/s, run-v). A Gluon-kernel version of the row quantization was
    correct but 1.2% slower there (31,657 / 32,065 against 32,072 / 32,425, again one kernel
    compiled after start-up) and was removed (benchmarks/h200-quant/README.md, run-y)."""
    return os.environ.get("KILN_ATTN_QUANT_OUT", "0") == "1"


def large_decode_min_seqs(num_kv_heads: int, num_sms: int) -> int:
    """The sequence count from which a decode launch takes LARGE_DECODE_TILE."""
    return -(-2 * num_sms // num_kv_heads)


def _paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor,
                  qk_scale: float, window: int, tuning: dict | None = None,
                  v_scale: float = 1.0, quant_dtype: torch.dtype | None = None
                  ) -> QuantizedRows | None:
    """Flash-decoding launch; `tuning` (benchmarks only) overrides partitions (a count) or
    partition (keys per partition of max_seq_len), block_n/warps/stages, fp8_asm, late_v (see
    late_values_enabled), maxnreg (a register cap for the compiler) and gluon (the Gluon
    kernel's (block_n, stages, keys_m), or None for the Triton kernel; see gluon_decode_tile).
    quant_dtype (float8_e4m3fn): where the kernel can (a fused merge, at most QUANT_PAD_ABOVE
    rows, or one partition per sequence over an fp8 cache), it also quantizes out per token
    and returns those rows; otherwise None."""
    tuning = tuning or {}
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_q_heads = q.shape[1]
    group = num_q_heads // num_kv_heads
    num_seqs = meta.num_seqs
    max_seq_len = max(meta.max_seq_len, 1)
    # float32 (a test dtype) runs its dots on FMA units: smaller tiles keep it out of local memory.
    block_n, num_warps, num_stages = (16 if q.dtype == torch.float32 else 32), 4, 2
    large = False
    if q.dtype != torch.float32 and head_dim <= 128:
        large = num_seqs >= large_decode_min_seqs(num_kv_heads, _num_sms(q.device))
        tile = decode_tile(large)
        block_n, num_warps, num_stages = (tile[k] for k in ("block_n", "num_warps", "num_stages"))
    block_n = tuning.get("block_n", block_n)
    if "partition" in tuning:  # keys per partition of max_seq_len, as the sweeps give them
        num_parts = triton.cdiv(max_seq_len, tuning["partition"])
    else:
        num_parts = tuning.get("partitions") or _decode_partitions(
            num_seqs, num_kv_heads, max_seq_len, _num_sms(q.device), block_n)
    single = num_parts == 1
    if single:
        part_acc = part_max = part_sum = out  # unused
    else:
        part_max = torch.empty(num_seqs, num_q_heads, num_parts, dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
        part_acc = torch.empty(num_seqs, num_q_heads, num_parts, head_dim, dtype=torch.float32,
                               device=q.device)
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
    num_warps = tuning.get("num_warps", num_warps)
    fused = {}
    if not single and fused_reduce_enabled() and num_seqs * num_kv_heads <= SPLIT_LOCKS:
        locks = split_locks(q.device)
        if locks is not None:
            rows = triton.next_power_of_2(group)
            # the merge's [rows, partitions, head_dim] float32 tile: at most 64 values a thread
            per_step = max(1, min(16, 64 * 32 * num_warps // (rows * head_dim)))
            fused = dict(lock_ptr=locks, FUSED_REDUCE=True, GROUP_P2=rows,
                         MERGE_P=1 << (per_step.bit_length() - 1))
    quantized = None
    width = num_q_heads * head_dim
    rows_ok = (quant_dtype == torch.float8_e4m3fn and out.stride(0) == width
               and out.stride(1) == head_dim and out.stride(2) == 1)
    # A fused merge (at most QUANT_PAD_ABOVE rows) or one partition per sequence over an fp8
    # cache (a large batch) quantizes the rows in the kernel; its counters follow the merge's
    # (fused) or are its own. (Over a bf16 cache the single-partition kernel would need 214
    # registers a thread instead of 168 for it on sm_90: four programs per SM instead of five.)
    if rows_ok and ((fused and out.shape[0] <= QUANT_PAD_ABOVE
                     and num_seqs * (num_kv_heads + 1) <= SPLIT_LOCKS)
                    or (single and is_fp8_kv_cache(kv_cache) and num_seqs <= SPLIT_LOCKS)):
        locks = fused.get("lock_ptr") if fused else split_locks(q.device)
        if locks is not None:
            codes, scales = quantized_rows_buffers(out.shape[0], width, quant_dtype, q.device)
            quantized = QuantizedRows(codes, scales, out.shape[0], (out.shape[0], width),
                                      out.dtype)
            fused.update(lock_ptr=locks, codes_ptr=codes, scales_ptr=scales,
                         codes_stride=codes.stride(0), QUANT_ROW=triton.next_power_of_2(width))
    fp8_asm = tuning.get("fp8_asm", fp8_asm_ok(q, kv_cache))
    # One partition per sequence over an fp8 cache: the Gluon kernel, unless the row is to be
    # quantized here (KILN_ATTN_QUANT_OUT), which only the Triton kernel does.
    gluon_tile = tuning.get("gluon", gluon_decode_tile() if gluon_decode_enabled() else None)
    if (gluon_tile and single and large and fp8_asm and window == 0 and head_dim == 128
            and group <= 16 and quantized is None):
        block_n, stages, keys_m = gluon_tile
        # the transposed kernel takes at most 8 query heads per kv head
        decode_gluon.decode_fp8(q, kv_cache, meta, out, qk_scale, v_scale, block_n, stages,
                                keys_m and group <= 8, pdl=pdl_args(q))
        return None
    _decode_partition_kernel[(num_seqs, num_kv_heads, num_parts)](
        q, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, out,
        part_acc, part_max, part_sum, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        meta.block_tables.stride(0), qk_scale, v_scale, window, num_q_heads, num_parts, group,
        BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, SINGLE=single,
        USE_WINDOW=window > 0, DOT_PREC=dot_prec, KV_FP8=is_fp8_kv_cache(kv_cache),
        FP8_ASM=fp8_asm, LATE_V=tuning.get("late_v", fp8_asm and large and late_values_enabled()),
        KEYS_WIDE=tuning.get("keys_wide", large and keys_wide_enabled()), **fused,
        num_warps=num_warps, num_stages=tuning.get("num_stages", num_stages),
        **({"maxnreg": tuning["maxnreg"]} if tuning.get("maxnreg") else {}), **pdl_args(q))
    if not single and not fused:
        _decode_reduce_kernel[(num_seqs, num_q_heads)](
            meta.seq_lens, meta.query_start_loc, out, part_acc, part_max, part_sum,
            out.stride(0), out.stride(1), window, num_q_heads, num_parts,
            # One block width for every partition count: one compiled variant (masked lanes
            # cost next to nothing here).
            HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_P=16, USE_WINDOW=window > 0, num_warps=4,
            **pdl_args(q))
    return quantized


def _paged_prefill(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor,
                   qk_scale: float, window: int, tuning: dict | None = None,
                   v_scale: float = 1.0) -> None:
    """Tiled causal launch; `tuning` (benchmarks only) overrides block_m/block_n/warps/stages."""
    tuning = tuning or {}
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    group = q.shape[1] // num_kv_heads
    max_rows = meta.max_query_len * group
    if q.dtype == torch.float32:
        # FMA-unit dots (a test dtype): small tiles keep the registers out of local memory.
        block_m, block_n, num_warps = min(32, max(16, triton.next_power_of_2(max_rows))), 16, 4
    elif head_dim > 128:
        block_m, block_n, num_warps = min(64, max(16, triton.next_power_of_2(max_rows))), 32, 4
    else:
        # 128x128 tiles, 8 warps, 3 stages: fastest of the sweep at 2048-token prefills (H200).
        block_m = min(128, max(16, triton.next_power_of_2(max_rows)))
        block_n, num_warps = (128, 8) if block_m >= 128 else (64, 4)
    block_m, block_n = tuning.get("block_m", block_m), tuning.get("block_n", block_n)
    num_warps, num_stages = tuning.get("num_warps", num_warps), tuning.get("num_stages", 3)
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(max_rows, block_m), num_kv_heads, meta.num_seqs)
    _prefill_kernel[grid](
        q, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, out,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        meta.block_tables.stride(0), qk_scale, v_scale, window, group,
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        USE_WINDOW=window > 0, DOT_PREC=dot_prec, KV_FP8=is_fp8_kv_cache(kv_cache),
        num_warps=num_warps, num_stages=num_stages, **pdl_args(q))


def wants_fresh_kv(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                   sliding_window: int | None = None) -> bool:
    """Whether paged_attention would read fresh prompts' keys/values from the step's own tensors
    (``fresh_kv``), so the caller should keep the rotated keys (rotary_and_write_kv's k_out; with
    an fp8 cache the keys' and values' codes, k_out and v_out in float16: its attention must see
    the quantized values, as later steps will).

    That path (kiln.kernels.prefill_fresh) needs a Triton-capable device, a half-precision
    activation dtype, head_dim 64 or 128 and no sliding window. KILN_FRESH_FP8=0 keeps fp8
    caches' prompts on the paged kernel.
    """
    return (meta.max_query_len > 1 and meta.fresh_from < meta.num_seqs and not sliding_window
            and _triton_ok(q, kv_cache) and fresh_prefill_supports(q)
            and (not is_fp8_kv_cache(kv_cache) or os.environ.get("KILN_FRESH_FP8", "1") == "1"))


def _launch_scales(kv_cache: torch.Tensor, scale: float, sliding_window: int | None,
                   k_scale: float, v_scale: float) -> tuple[float, int, float]:
    """The kernels' (log2-domain softmax scale, window or 0, value scale of an fp8 cache)."""
    qk_scale = float(scale) * _LOG2E
    if not is_fp8_kv_cache(kv_cache):
        return qk_scale, int(sliding_window) if sliding_window else 0, 1.0
    # q . (k8 * k_scale) == (q . k8) * k_scale: the key scale rides on the softmax scale.
    return (qk_scale * float(k_scale), int(sliding_window) if sliding_window else 0,
            float(v_scale))


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                    sliding_window: int | None = None, k_scale: float = 1.0,
                    v_scale: float = 1.0,
                    fresh_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                    quant_dtype: torch.dtype | None = None) -> torch.Tensor | QuantizedRows:
    """Attention of the new tokens' queries over the paged cache (dispatcher). Returns [T, Hq, D],
    or with ``quant_dtype`` (float8_e4m3fn: the reader is an fp8 W8A8 o_proj) the output's rows
    [T, Hq * D] quantized per token, as a kernels.quant_act.QuantizedRows: from the decode
    kernel itself where it merges its partitions (decode batches of up to QUANT_PAD_ABOVE rows),
    else by quantize_rows; the same codes and scales either way.

    The new tokens' K/V must already be written (see kernels.rotary.rotary_and_write_kv).
    Decode-only batches (max_query_len == 1) take a split-context (flash-decoding) kernel whose
    grid depends only on num_seqs and max_seq_len; other batches take a tiled causal kernel,
    except their leading one-token rows (running decodes), which take the decode kernel.
    Launch sizes come from the host-side fields of meta: no device-to-host sync.
    ``k_scale``/``v_scale`` dequantize an fp8 cache (plain floats, fixed per layer, so they are
    baked into captured graphs); caches of other dtypes ignore them.
    ``fresh_kv`` (rotated keys [T, Hk, D], values [T, Hk, D] of all T new tokens; for an fp8
    cache their e4m3 codes in float16; pass it only when wants_fresh_kv says so) lets the batch's
    trailing fresh prompts (meta.fresh_from) take a kernel that reads them from these tensors
    instead of the cache: the same values, faster.
    """
    if quant_dtype is not None:
        quantized = None
        if _triton_ok(q, kv_cache) and meta.num_seqs > 0 and meta.max_query_len == 1:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            qk_scale, window, fp8_v_scale = _launch_scales(kv_cache, scale, sliding_window,
                                                           k_scale, v_scale)
            quantized = _paged_decode(q, kv_cache, meta, out, qk_scale, window,
                                      v_scale=fp8_v_scale, quant_dtype=quant_dtype)
        else:
            out = paged_attention(q, kv_cache, meta, scale, sliding_window, k_scale, v_scale,
                                  fresh_kv)
        rows = out.reshape(out.shape[0], -1)
        return quantized or quantize_rows(rows, quant_dtype, tuple(rows.shape))
    if not _triton_ok(q, kv_cache) or meta.num_seqs == 0:
        return paged_attention_ref(q, kv_cache, meta, scale, sliding_window, k_scale, v_scale)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    qk_scale, window, fp8_v_scale = _launch_scales(kv_cache, scale, sliding_window, k_scale, v_scale)
    if meta.max_query_len == 1:
        _paged_decode(q, kv_cache, meta, out, qk_scale, window, v_scale=fp8_v_scale)
        return out
    body = meta
    if meta.decode_split is not None:  # leading one-token rows on the decode kernel
        _paged_decode(q, kv_cache, meta.decode_split[0], out, qk_scale, window,
                      v_scale=fp8_v_scale)
        body = meta.decode_split[1]
    n = body.num_seqs
    fresh = body.fresh_from if fresh_kv is not None else n
    fp8 = is_fp8_kv_cache(kv_cache)
    if fresh < n and not fresh_prefill_ok(q, *fresh_kv, codes=fp8):
        fresh = n
    if fresh > 0:  # chunks over a cached prefix (or everything): the tiled paged kernel
        _paged_prefill(q, kv_cache, body.rows(0, fresh) if fresh < n else body, out, qk_scale,
                       window, v_scale=fp8_v_scale)
    if fresh < n:
        part = body.rows(fresh, n) if fresh > 0 else body
        fresh_prefill_attention(q, fresh_kv[0], fresh_kv[1], part.query_start_loc,
                                part.max_query_len, scale, out,
                                fp8_scales=(k_scale, v_scale) if fp8 else None)
    return out
