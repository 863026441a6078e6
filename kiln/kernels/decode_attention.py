"""Decode attention over the paged KV cache (flash-decoding): one query token per sequence, each
sequence's keys split into partitions across programs when the batch is small, merged by the
last program to finish (or a reduce kernel); large batches over an fp8 cache run the Gluon
kernels of kiln.kernels.decode_gluon. Entry point: _paged_decode, called by
kiln.kernels.attention.paged_attention."""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args, pdl_prewait
from kiln.kernels.attention_ref import is_fp8_kv_cache
from kiln.kernels.attention_tiles import (_META_PTRS, _NEG_START, _attend_range, _fp8_dot_q,
                                          _kv_offsets)
from kiln.kernels.pdl import pdl_start, prefetch_l2
from kiln.kernels.qmm_common import SPLIT_LOCKS, split_locks
from kiln.kernels.rotary import quantize_fp8, rope_cos_sin, rope_rotate
from kiln.kernels.quant_act import (QUANT_PAD_ABOVE, QuantizedRows, quantized_rows_buffers,
                                    store_row_quantized)
from kiln.layers.forward_context import AttentionMetadata

try:  # Gluon (Triton's explicit-layout dialect) as Triton 3.6 has it
    from kiln.kernels import decode_gluon
except (ImportError, AttributeError):  # pragma: no cover - older Triton
    decode_gluon = None


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


@triton.jit
def _decode_span(seq_lens_ptr, query_start_ptr, seq, part, window, max_partitions,
                 BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, USE_WINDOW: tl.constexpr):
    """A decode program's sequence length, query start and count, and its keys lo .. hi of the
    sequence's `count` partitions."""
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
    return seq_len, q_start, q_len, lo, hi, count


@triton.jit
def _prefetch_first_tile(cache_ptr, block_table_row, lo, hi, kv_head, cache_kv_stride,
                         cache_block_stride, cache_slot_stride, cache_head_stride,
                         HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Ask L2 for the keys and values of tokens lo .. lo + BLOCK_N - 1 (below hi): one bulk
    prefetch a row (HEAD_DIM elements, 16-byte aligned). CUDA only (inline PTX)."""
    toks = lo + tl.arange(0, BLOCK_N)
    valid = toks < hi
    offs = _kv_offsets(block_table_row, toks, valid, kv_head, cache_block_stride,
                       cache_slot_stride, cache_head_stride, BLOCK_SIZE)
    row_bytes = tl.zeros_like(toks) + HEAD_DIM * cache_ptr.dtype.element_ty.primitive_bitwidth // 8
    prefetch_l2((cache_ptr + offs).to(tl.int64, bitcast=True), row_bytes, valid)
    prefetch_l2((cache_ptr + cache_kv_stride + offs).to(tl.int64, bitcast=True), row_bytes, valid)


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
                             KEYS_WIDE: tl.constexpr = False, k_new_ptr=None, v_new_ptr=None,
                             pos_ptr=None, cos_sin_ptr=None, slot_ptr=None, kn_tok_stride=0,
                             kn_head_stride=0, vn_tok_stride=0, vn_head_stride=0,
                             cos_sin_stride=0, k_scale_w=1.0, v_scale_w=1.0,
                             ROPE: tl.constexpr = False, PRE_WAIT: tl.constexpr = False,
                             PREFETCH_KV: tl.constexpr = False):
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
    # ROPE: q_ptr holds the step's queries before RoPE, and each program rotates its heads'
    # itself; the program of a sequence's last partition (the only one whose keys include the
    # new token) also rotates the token's key (k_new_ptr) and writes it and its value
    # (v_new_ptr) into the cache at slot_ptr[token] (-1: nowhere; an fp8 cache scaled by
    # k_scale_w / v_scale_w) before it reads its keys: kiln.kernels.rotary's launch saved, the
    # same bits (rotary.rope_values).
    # PRE_WAIT: what depends on no kernel of this step's chain since its inputs were written
    # (the step's lengths, positions and block tables, the cos/sin table, the cache's older keys)
    # is read before the PDL wait: the lengths and partition bounds, the position's cos and sin,
    # and (PREFETCH_KV) the partition's first tile of keys and values asked into L2. See
    # kiln.kernels.pdl_prewait for when that is safe.
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    dims = tl.arange(0, HEAD_DIM)
    HALF: tl.constexpr = HEAD_DIM // 2
    block_table_row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    if not PRE_WAIT:
        pdl_start(PDL)
    seq_len, q_start, q_len, lo, hi, count = _decode_span(
        seq_lens_ptr, query_start_ptr, seq, part, window, max_partitions, BLOCK_N, SINGLE,
        USE_WINDOW)
    if (q_len == 0) | (part >= count):
        return
    if ROPE:
        cos, sin = rope_cos_sin(cos_sin_ptr + tl.load(pos_ptr + q_start).to(tl.int64) * cos_sin_stride,
                                dims, HALF, q_ptr.dtype.element_ty)
    if PREFETCH_KV:
        _prefetch_first_tile(cache_ptr, block_table_row, lo, hi, kv_head, cache_kv_stride,
                             cache_block_stride, cache_slot_stride, cache_head_stride, HEAD_DIM,
                             BLOCK_SIZE, BLOCK_N)
    if PRE_WAIT:
        pdl_start(PDL)
    g = tl.arange(0, BLOCK_G)
    heads = kv_head * group + g
    row_ok = g < group
    q_rows = q_ptr + q_start.to(tl.int64) * q_tok_stride + heads[:, None] * q_head_stride
    q = tl.load(q_rows + dims[None, :], mask=row_ok[:, None], other=0.0)
    if ROPE:
        partner = (dims + HALF) % HEAD_DIM
        q = rope_rotate(q, tl.load(q_rows + partner[None, :], mask=row_ok[:, None], other=0.0),
                        dims[None, :], cos[None, :], sin[None, :], HALF)
        if part == count - 1:
            _write_new_kv(k_new_ptr, v_new_ptr, slot_ptr, cache_ptr, q_start, kv_head, dims,
                          partner, cos, sin, kn_tok_stride, kn_head_stride, vn_tok_stride,
                          vn_head_stride, cache_kv_stride, cache_slot_stride, cache_head_stride,
                          k_scale_w, v_scale_w, HALF, KV_FP8)
    if KV_FP8:
        q = _fp8_dot_q(q)
    m = tl.full([BLOCK_G], _NEG_START, tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
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
def _write_new_kv(k_new_ptr, v_new_ptr, slot_ptr, cache_ptr, tok, kv_head, dims, partner, cos, sin,
                  kn_tok_stride, kn_head_stride, vn_tok_stride, vn_head_stride, cache_kv_stride,
                  cache_slot_stride, cache_head_stride, k_scale, v_scale, HALF: tl.constexpr,
                  KV_FP8: tl.constexpr):
    """Rotate token tok's key of kv_head and write it and its value into the cache at the
    token's slot (slot_ptr[tok]; -1 writes nothing), as kiln.kernels.rotary's cache write does;
    then a barrier, so that the program's own reads of the cache see them. Slots index the
    flattened (block, offset) dims of the contiguous cache."""
    tok64 = tok.to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    every = dims >= 0
    ok = every & (slot >= 0)
    k_row = k_new_ptr + tok64 * kn_tok_stride + kv_head * kn_head_stride
    key = rope_rotate(tl.load(k_row + dims, mask=every, other=0.0),
                      tl.load(k_row + partner, mask=every, other=0.0), dims, cos, sin, HALF)
    val = tl.load(v_new_ptr + tok64 * vn_tok_stride + kv_head * vn_head_stride + dims, mask=every,
                  other=0.0)
    if KV_FP8:
        key = quantize_fp8(key, k_scale)
        val = quantize_fp8(val, v_scale)
    dst = cache_ptr + slot * cache_slot_stride + kv_head * cache_head_stride + dims
    tl.store(dst, key.to(cache_ptr.dtype.element_ty), mask=ok)
    tl.store(dst + cache_kv_stride, val.to(cache_ptr.dtype.element_ty), mask=ok)
    tl.debug_barrier()


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


@dataclasses.dataclass(frozen=True)
class DecodeRope:
    """What a decode launch needs to apply RoPE and write the step's K/V itself (the kernel's
    ROPE; see decode_rope_ok): the tokens' positions [T] and cache slots [T] (-1: not written),
    the cos/sin cache [max_pos, D] (kiln.kernels.rotary's layout), keys and values [T, Hk, D]
    before RoPE, and the fp8 cache's scales (ignored by other caches)."""

    positions: torch.Tensor
    slot_mapping: torch.Tensor
    cos_sin_cache: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_scale: float = 1.0
    v_scale: float = 1.0


def rope_in_decode_enabled() -> bool:
    """KILN_ATTN_ROPE (default 1; 0 turns it off): small decode batches (below
    large_decode_min_seqs) apply RoPE and write the step's K/V in the decode attention kernel
    (DecodeRope) instead of kiln.kernels.rotary's launch, with the same bits. bf16 8B batch 1:
    234.1 -> 237.6 tok/s on the H200, 172.5 -> 174.4 on an H100; the fp8 and int4-wo engines
    unchanged (benchmarks/h200-dataflow, run-c and run-d)."""
    return os.environ.get("KILN_ATTN_ROPE", "1") == "1"


def decode_rope_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                   cos_sin_cache: torch.Tensor, num_seqs: int) -> bool:
    """Whether a decode launch over these tensors (one query token per sequence; q, k and v
    before RoPE) can take a DecodeRope: the Triton partition kernel runs it (a batch below
    large_decode_min_seqs, never the Gluon kernels), head_dim even with rotation over all of it,
    unit strides on it, and a contiguous cache."""
    head_dim = q.shape[-1]
    return (q.shape[0] == num_seqs and k.dtype == q.dtype and v.dtype == q.dtype
            and head_dim % 2 == 0 and cos_sin_cache.shape[-1] == head_dim
            and cos_sin_cache.stride(-1) == 1 and q.stride(-1) == 1 and k.stride(-1) == 1
            and v.stride(-1) == 1 and kv_cache.is_contiguous()
            and num_seqs < large_decode_min_seqs(kv_cache.shape[3], _num_sms(q.device)))


def large_decode_min_seqs(num_kv_heads: int, num_sms: int) -> int:
    """The sequence count from which a decode launch takes LARGE_DECODE_TILE."""
    return -(-2 * num_sms // num_kv_heads)


def _paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor,
                  qk_scale: float, window: int, tuning: dict | None = None,
                  v_scale: float = 1.0, quant_dtype: torch.dtype | None = None,
                  rope: DecodeRope | None = None) -> QuantizedRows | None:
    """Flash-decoding launch; `tuning` (benchmarks only) overrides partitions (a count) or
    partition (keys per partition of max_seq_len), block_n/warps/stages, fp8_asm, late_v (see
    late_values_enabled), maxnreg (a register cap for the compiler) and gluon (the Gluon
    kernel's (block_n, stages, keys_m), or None for the Triton kernel; see gluon_decode_tile).
    quant_dtype (float8_e4m3fn): where the kernel can (a fused merge, at most QUANT_PAD_ABOVE
    rows, or one partition per sequence over an fp8 cache), it also quantizes out per token
    and returns those rows; otherwise None. rope (see decode_rope_ok): q is before RoPE, and
    the kernel rotates it and writes the step's K/V."""
    tuning = tuning or {}
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_q_heads = q.shape[1]
    group = num_q_heads // num_kv_heads
    num_seqs = meta.num_seqs
    if rope is not None and not decode_rope_ok(q, rope.k, rope.v, kv_cache, rope.cos_sin_cache,
                                               num_seqs):
        raise ValueError("decode attention applies RoPE only as decode_rope_ok allows")
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
            and group <= 16 and quantized is None and rope is None):
        block_n, stages, keys_m = gluon_tile
        # the transposed kernel takes at most 8 query heads per kv head
        decode_gluon.decode_fp8(q, kv_cache, meta, out, qk_scale, v_scale, block_n, stages,
                                keys_m and group <= 8, pdl=pdl_args(q, small=True))
        return None
    prewait = pdl_prewait()
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
        **({} if rope is None else _rope_args(rope, kv_cache)),
        PRE_WAIT=prewait, PREFETCH_KV=prewait and q.is_cuda and not large, num_warps=num_warps,
        num_stages=tuning.get("num_stages", num_stages),
        **({"maxnreg": tuning["maxnreg"]} if tuning.get("maxnreg") else {}), **pdl_args(q, small=True))
    if not single and not fused:
        _decode_reduce_kernel[(num_seqs, num_q_heads)](
            meta.seq_lens, meta.query_start_loc, out, part_acc, part_max, part_sum,
            out.stride(0), out.stride(1), window, num_q_heads, num_parts,
            # One block width for every partition count: one compiled variant (masked lanes
            # cost next to nothing here).
            HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_P=16, USE_WINDOW=window > 0, num_warps=4,
            **pdl_args(q, small=True))
    return quantized


def _rope_args(rope: DecodeRope, kv_cache: torch.Tensor) -> dict:
    """The partition kernel's ROPE arguments for rope."""
    return dict(k_new_ptr=rope.k, v_new_ptr=rope.v, pos_ptr=rope.positions,
                cos_sin_ptr=rope.cos_sin_cache, slot_ptr=rope.slot_mapping,
                kn_tok_stride=rope.k.stride(0), kn_head_stride=rope.k.stride(1),
                vn_tok_stride=rope.v.stride(0), vn_head_stride=rope.v.stride(1),
                cos_sin_stride=rope.cos_sin_cache.stride(0),
                k_scale_w=float(rope.k_scale) if is_fp8_kv_cache(kv_cache) else 1.0,
                v_scale_w=float(rope.v_scale) if is_fp8_kv_cache(kv_cache) else 1.0, ROPE=True)
