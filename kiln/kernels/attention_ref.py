"""Torch references of paged attention and of the KV-cache write, on any device, and the fp8 KV
cache format they define (see kiln.kernels.attention): the kernels are tested against these.
Where Triton does not run (the CPU engine), paged_attention runs paged_attention_batched, the
reference's attention with the decode rows of a batch computed together."""

from __future__ import annotations

import torch

from kiln.layers.forward_context import AttentionMetadata


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


def _visible(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """Which keys (positions k_pos, last dim) each query (positions q_pos) sees: k <= q, and with a
    window W also k > q - W. q_pos [..., Q, 1] against k_pos [..., 1, S] gives [..., Q, S]."""
    visible = k_pos <= q_pos
    if sliding_window is not None:
        visible &= k_pos > q_pos - sliding_window
    return visible


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
    out = torch.empty_like(q)
    start = 0
    for b, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
        if q_len > 0:
            out[start:start + q_len] = _one_sequence_ref(q[start:start + q_len], kv_cache, meta, b,
                                                         scale, sliding_window, k_scale, v_scale)
        start += q_len
    assert start == q.shape[0], "query_lens_cpu does not cover q"
    return out


def _one_sequence_ref(qs: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, b: int,
                      scale: float, sliding_window: int | None, k_scale: float,
                      v_scale: float) -> torch.Tensor:
    """paged_attention_ref for sequence b alone: its new tokens' queries qs [q_len, Hq, D]."""
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    q_len, num_heads, _ = qs.shape
    group = num_heads // num_kv_heads
    seq_len = meta.seq_lens_cpu[b]
    blocks = meta.block_tables[b, :-(-seq_len // block_size)].long()
    keys = _gather_ref(kv_cache, 0, blocks, seq_len, k_scale)
    values = _gather_ref(kv_cache, 1, blocks, seq_len, v_scale)
    qb = qs.float().view(q_len, num_kv_heads, group, head_dim)
    scores = torch.einsum("qhgd,shd->hgqs", qb, keys) * scale
    q_pos = torch.arange(seq_len - q_len, seq_len, device=qs.device)
    visible = _visible(q_pos[:, None], torch.arange(seq_len, device=qs.device)[None, :],
                       sliding_window)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    ob = torch.einsum("hgqs,shd->qhgd", probs, values).reshape(q_len, num_heads, head_dim)
    return ob.to(qs.dtype)


def paged_attention_batched(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                            scale: float, sliding_window: int | None = None, k_scale: float = 1.0,
                            v_scale: float = 1.0) -> torch.Tensor:
    """paged_attention_ref's attention where the Triton kernels do not run (the CPU engine): the
    sequences with one new token (decodes) together, in a few batched torch ops over their keys
    padded to the longest; those with more (prompt chunks) one by one, as the reference does.

    Equal to paged_attention_ref up to float32 rounding (the sums run in other orders). Cache
    blocks past a sequence's length, and block-table entries past its blocks, are never let into
    its result, whatever they hold (NaN included).
    """
    query_lens = meta.query_lens_cpu
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    assert starts[-1] == q.shape[0], "query_lens_cpu does not cover q"
    decodes = [b for b, n in enumerate(query_lens) if n == 1]
    if len(decodes) < 2:
        return paged_attention_ref(q, kv_cache, meta, scale, sliding_window, k_scale, v_scale)
    out = torch.empty_like(q)
    for b, n in enumerate(query_lens):
        if n > 1:
            out[starts[b]:starts[b + 1]] = _one_sequence_ref(q[starts[b]:starts[b + 1]], kv_cache,
                                                             meta, b, scale, sliding_window,
                                                             k_scale, v_scale)
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
    device = q.device
    lengths = [meta.seq_lens_cpu[b] for b in decodes]
    seq_lens = torch.tensor(lengths, device=device)
    longest, shortest = max(lengths), min(lengths)
    seqs = torch.tensor(decodes, device=device)
    tables = meta.block_tables[seqs, :-(-longest // block_size)].long().clamp(0, num_blocks - 1)
    k_pos = torch.arange(longest, device=device)
    valid = _visible((seq_lens - 1)[:, None], k_pos[None, :], sliding_window)  # [B, S]
    keys = _gather_batched(kv_cache, 0, tables, longest, k_scale)
    values = _gather_batched(kv_cache, 1, tables, longest, v_scale)
    # Slots past a sequence's length get probability 0, but 0 * NaN would reach the sum: zero
    # them (only the columns past the shortest sequence can hold any; the copy is values' own).
    if shortest < longest:
        past = k_pos[None, shortest:] >= seq_lens[:, None]
        values[:, shortest:].masked_fill_(past[:, :, None, None], 0.0)
    rows = torch.tensor([starts[b] for b in decodes], device=device)
    qb = q[rows].float().view(len(decodes), num_kv_heads, -1, head_dim)
    scores = torch.einsum("bhgd,bshd->bhgs", qb, keys) * scale
    probs = torch.softmax(scores.masked_fill(~valid[:, None, None, :], float("-inf")), dim=-1)
    ob = torch.einsum("bhgs,bshd->bhgd", probs, values)
    out[rows] = ob.reshape(len(decodes), -1, head_dim).to(q.dtype)
    return out


def _gather_batched(kv_cache: torch.Tensor, which: int, tables: torch.Tensor, length: int,
                    scale: float) -> torch.Tensor:
    """Keys (which=0) or values (1) of the first `length` slots of each row of block ids
    `tables` [B, blocks], float32 [B, length, Hk, D] (an fp8 cache dequantized), a tensor of
    its own (never a view of the cache)."""
    _, _, _, num_kv_heads, head_dim = kv_cache.shape
    rows = tables.shape[0]
    if not is_fp8_kv_cache(kv_cache):
        return kv_cache[which, tables].reshape(rows, -1, num_kv_heads, head_dim)[:, :length].float()
    raw = kv_cache.view(torch.uint8)[which, tables].view(FP8_KV_DTYPE)
    return dequantize_kv_ref(raw.reshape(rows, -1, num_kv_heads, head_dim)[:, :length], scale)
