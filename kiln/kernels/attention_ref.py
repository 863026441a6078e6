"""Torch references of paged attention and of the KV-cache write, on any device, and the fp8 KV
cache format they define (see kiln.kernels.attention): the kernels are tested against these, and
paged_attention runs them where Triton does not."""

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
