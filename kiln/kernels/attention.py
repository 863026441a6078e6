"""Paged attention over each sequence's context in the paged KV cache (and the reference cache write).

One call handles a flat batch mixing prefill chunks (several new tokens that attend to cached context
and to each other causally) and decode tokens (one new token each).

FP8 KV cache: a cache of dtype float8_e4m3fn holds ``clamp(k * (1 / k_scale), -448, 448)`` rounded
to e4m3 (likewise v with v_scale), with one (k_scale, v_scale) pair of Python floats per layer; a read
dequantizes ``fp8.to(float32) * scale``. Scales are ignored for caches of any other dtype. Without
calibrated scales (a checkpoint run with an fp8 cache) the scales are 1.0, as in vLLM.

This module holds the dispatcher (paged_attention) and the tiled prefill kernel; the decode
kernels are in decode_attention, their shared Triton pieces in attention_tiles, and the torch
references and the fp8 cache format in attention_ref.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.attention_ref import is_fp8_kv_cache, paged_attention_batched
from kiln.kernels.attention_tiles import _LOG2E, _META_PTRS, _NEG_START, _attend_range, _fp8_dot_q
from kiln.kernels.decode_attention import DecodeRope, _paged_decode, decode_rope_ok
from kiln.kernels.pdl import pdl_start
from kiln.kernels.prefill_fresh import (fresh_prefill_attention, fresh_prefill_ok,
                                        fresh_prefill_supports)
from kiln.kernels.quant_act import QuantizedRows, quantize_rows
from kiln.layers.forward_context import AttentionMetadata


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


def _triton_ok(q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Shapes the kernels handle: power-of-two head_dim >= 16, a cache of q's dtype or fp8."""
    head_dim = q.shape[-1]
    return (use_triton(q) and q.dim() == 3 and q.shape[0] > 0 and q.stride(-1) == 1
            and kv_cache.is_contiguous() and (kv_cache.dtype == q.dtype or is_fp8_kv_cache(kv_cache))
            and head_dim >= 16 and triton.next_power_of_2(head_dim) == head_dim
            and q.shape[1] % kv_cache.shape[3] == 0)


def decode_rope_possible(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         kv_cache: torch.Tensor, meta: AttentionMetadata,
                         cos_sin_cache: torch.Tensor) -> bool:
    """Whether paged_attention can take ``rope`` for this batch (q, k, v before RoPE): one
    token per sequence on the Triton decode kernel (decode_attention.decode_rope_ok)."""
    return (_triton_ok(q, kv_cache) and meta.num_seqs > 0 and meta.max_query_len == 1
            and decode_rope_ok(q, k, v, kv_cache, cos_sin_cache, meta.num_seqs))


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
        num_warps=num_warps, num_stages=num_stages, **pdl_args(q, small=True))


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
    return (meta.max_query_len > 1 and meta.fresh_from < meta.num_seqs
            and fresh_kv_possible(q, kv_cache, sliding_window))


def fresh_kv_possible(q: torch.Tensor, kv_cache: torch.Tensor,
                      sliding_window: int | None = None) -> bool:
    """wants_fresh_kv's conditions that do not depend on the batch: whether a layer's fresh
    prompts could ever take that path (the prefill graphs keep the rotated keys when so)."""
    return (not sliding_window and _triton_ok(q, kv_cache) and fresh_prefill_supports(q)
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
                    quant_dtype: torch.dtype | None = None,
                    rope: DecodeRope | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor | QuantizedRows:
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
    ``rope`` (decode batches of one token per sequence, see decode_attention.decode_rope_ok): q
    is before RoPE; the decode kernel rotates it and writes the step's K/V into the cache
    itself, instead of kiln.kernels.rotary's launch before it.
    ``out`` (q's shape and dtype; not with ``quant_dtype``): where the output goes, instead of a
    new tensor (the prefill graphs' static buffers).
    """
    if out is not None and (quant_dtype is not None or out.shape != q.shape
                            or out.dtype != q.dtype):
        raise ValueError("paged_attention's out must have q's shape and dtype, without quant_dtype")
    if rope is not None and not decode_rope_possible(q, rope.k, rope.v, kv_cache, meta,
                                                     rope.cos_sin_cache):
        raise ValueError("paged_attention applies RoPE itself only for decode batches on the "
                         "Triton kernels (decode_rope_possible)")
    if quant_dtype is not None:
        quantized = None
        if _triton_ok(q, kv_cache) and meta.num_seqs > 0 and meta.max_query_len == 1:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            qk_scale, window, fp8_v_scale = _launch_scales(kv_cache, scale, sliding_window,
                                                           k_scale, v_scale)
            quantized = _paged_decode(q, kv_cache, meta, out, qk_scale, window,
                                      v_scale=fp8_v_scale, quant_dtype=quant_dtype, rope=rope)
        else:
            out = paged_attention(q, kv_cache, meta, scale, sliding_window, k_scale, v_scale,
                                  fresh_kv)
        rows = out.reshape(out.shape[0], -1)
        return quantized or quantize_rows(rows, quant_dtype, tuple(rows.shape))
    if not _triton_ok(q, kv_cache) or meta.num_seqs == 0:
        ref = paged_attention_batched(q, kv_cache, meta, scale, sliding_window, k_scale,
                                      v_scale)
        return ref if out is None else out.copy_(ref)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    qk_scale, window, fp8_v_scale = _launch_scales(kv_cache, scale, sliding_window, k_scale, v_scale)
    if meta.max_query_len == 1:
        _paged_decode(q, kv_cache, meta, out, qk_scale, window, v_scale=fp8_v_scale, rope=rope)
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
