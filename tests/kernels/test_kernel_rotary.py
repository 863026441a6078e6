"""Triton RoPE (+ fused KV-cache write) against the torch references (interpreter, CPU)."""

import math

import pytest
import torch

from kernel_cases import TOL, rel_err
from kiln.kernels.rotary import (apply_rotary, apply_rotary_ref, rotary_and_write_kv,
                                 rotary_and_write_kv_ref)


def cos_sin_cache(max_pos: int, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def qkv_views(num_tokens, num_q_heads, num_kv_heads, head_dim, dtype, gen):
    """q, k, v as strided views of one fused projection output, as the model produces them."""
    width = (num_q_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width, generator=gen).to(dtype)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    shape = lambda t, h: t.view(num_tokens, h, head_dim)  # noqa: E731
    return shape(q, num_q_heads), shape(k, num_kv_heads), shape(v, num_kv_heads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim,block_size",
                         [(4, 4, 16, 16), (8, 2, 64, 32), (12, 3, 32, 16), (64, 8, 16, 16)])
def test_rotary_and_write_kv(dtype, num_q_heads, num_kv_heads, head_dim, block_size, gen):
    num_tokens, num_blocks, max_pos = 11, 4, 300
    q, k, v = qkv_views(num_tokens, num_q_heads, num_kv_heads, head_dim, dtype, gen)
    positions = torch.randint(0, max_pos, (num_tokens,), generator=gen)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen)[:3]] = -1  # padding tokens: never written
    cache = cos_sin_cache(max_pos, head_dim)
    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), math.nan, dtype=dtype)
    ref_cache = kv_cache.clone()

    q_out = rotary_and_write_kv(q, k, v, positions, cache, kv_cache, slots)
    q_ref = rotary_and_write_kv_ref(q, k, v, positions, cache, ref_cache, slots)

    assert rel_err(q_out, q_ref) < TOL[dtype]
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)
    flat_ref = ref_cache.view(2, -1, num_kv_heads, head_dim)
    written = slots[slots >= 0]
    assert rel_err(flat[:, written], flat_ref[:, written]) < TOL[dtype]
    untouched = torch.ones(flat.shape[1], dtype=torch.bool)
    untouched[written] = False
    assert flat[:, untouched].isnan().all(), "a slot outside slot_mapping was written"
    # Values are copied, not rotated: exact.
    assert torch.equal(flat[1, written], flat_ref[1, written])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_apply_rotary(dtype, gen, poison_allocations):
    q, k, _ = qkv_views(6, 6, 2, 32, dtype, gen)
    positions = torch.randint(0, 50, (6,), generator=gen)
    cache = cos_sin_cache(50, 32)
    q_out, k_out = apply_rotary(q, k, positions, cache)
    q_ref, k_ref = apply_rotary_ref(q, k, positions, cache)
    assert rel_err(q_out, q_ref) < TOL[dtype]
    assert rel_err(k_out, k_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotary_keeps_rotated_keys_when_asked(dtype, gen, poison_allocations):
    # k_out gets every token's rotated keys (padding tokens too), the same bits as the cache.
    num_tokens, block_size = 9, 16
    q, k, v = qkv_views(num_tokens, 8, 2, 32, dtype, gen)
    positions = torch.randint(0, 100, (num_tokens,), generator=gen)
    slots = torch.randperm(2 * block_size, generator=gen)[:num_tokens]
    slots[4] = -1
    cache = cos_sin_cache(100, 32)
    kv_cache = torch.zeros(2, 2, block_size, 2, 32, dtype=dtype)
    k_out = torch.full(k.shape, math.nan, dtype=dtype)
    k_ref = torch.empty_like(k_out)
    rotary_and_write_kv(q, k, v, positions, cache, kv_cache, slots, k_out=k_out)
    rotary_and_write_kv_ref(q, k, v, positions, cache, kv_cache.clone(), slots, k_out=k_ref)
    assert rel_err(k_out, k_ref) < TOL[dtype]
    written = slots >= 0
    assert torch.equal(kv_cache.view(2, -1, 2, 32)[0, slots[written]], k_out[written])
