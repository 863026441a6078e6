"""Paged attention over each sequence's context in the paged KV cache (and the reference cache write).

One call handles a flat batch mixing prefill chunks (several new tokens that attend to cached context
and to each other causally) and decode tokens (one new token each).
"""

from __future__ import annotations

import torch

from kiln.layers.forward_context import AttentionMetadata


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """Reference cache write: token t's K/V go to flat slot slot_mapping[t] (-1: skip).

    k, v: [T, Hk, D]; kv_cache: [2, num_blocks, block_size, Hk, D], contiguous.
    """
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, num_kv_heads, head_dim)
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, k, v = slots[keep], k[keep], v[keep]
    flat[0].index_copy_(0, slots, k.to(kv_cache.dtype))
    flat[1].index_copy_(0, slots, v.to(kv_cache.dtype))


def paged_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                        scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """Reference attention over the paged cache, computed in float32.

    q: [T, Hq, D] for the new tokens (their K/V must already be in the cache). Query i of a
    sequence with context length S and q_len new tokens sits at position S - q_len + i and sees
    keys at positions j <= that position (and, with a sliding window W, j > position - W).
    Hq must be a multiple of the cache's Hk (grouped-query attention).
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
        keys = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
        values = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
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


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                    sliding_window: int | None = None) -> torch.Tensor:
    """Attention of the new tokens' queries over the paged cache (dispatcher). Returns [T, Hq, D].

    The new tokens' K/V must already be written (see kernels.rotary.rotary_and_write_kv).
    """
    return paged_attention_ref(q, kv_cache, meta, scale, sliding_window)
