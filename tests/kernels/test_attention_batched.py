"""paged_attention_batched (the attention the CPU engine runs) against paged_attention_ref."""

import pytest
import torch

from kernel_cases import paged_case
from kiln.kernels import attention
from kiln.kernels.attention_ref import (FP8_KV_DTYPE, paged_attention_batched, paged_attention_ref,
                                        quantize_kv_ref)


def poisoned(kv_cache, meta, block_size):
    """The cache with NaN in every slot no sequence may read (spare blocks, and the tail of each
    sequence's last block), and block tables padded past each sequence's blocks with ids out of
    range: none of it may reach a result."""
    cache = torch.full_like(kv_cache, float("nan"))
    tables = torch.full((meta.num_seqs, meta.block_tables.shape[1] + 2), 10 ** 6, dtype=torch.int32)
    for b, seq_len in enumerate(meta.seq_lens_cpu):
        n = -(-seq_len // block_size)
        tables[b, :n] = meta.block_tables[b, :n]
        for i, blk in enumerate(meta.block_tables[b, :n].tolist()):
            keep = min(block_size, seq_len - i * block_size)
            cache[:, blk, :keep] = kv_cache[:, blk, :keep]
    meta.block_tables = tables
    return cache


CASES = {
    "decodes": [(0, 1), (15, 1), (16, 1), (40, 1), (67, 1)],
    "mixed": [(30, 1), (0, 1), (12, 7), (5, 1), (0, 0), (0, 20), (48, 1)],
    "one decode": [(3, 1), (0, 9)],
    "prefill only": [(0, 5), (16, 3)],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group, window", [(1, None), (3, None), (4, 9)])
def test_batched_equals_the_reference(case, dtype, group, window, gen):
    block_size, kv_heads, head_dim = 16, 2, 32
    kv_cache, meta = paged_case(CASES[case], kv_heads, head_dim, block_size, dtype, gen)
    q = torch.randn(meta.num_tokens, kv_heads * group, head_dim, generator=gen).to(dtype)
    ref = paged_attention_ref(q, kv_cache, meta, head_dim ** -0.5, window)
    cache = poisoned(kv_cache, meta, block_size)
    got = paged_attention_batched(q, cache, meta, head_dim ** -0.5, window)
    assert got.dtype == dtype and not got.isnan().any()
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=2e-6, atol=2e-6)
    else:  # the same float32 result up to its last bits, then one rounding to bfloat16
        assert (got.float() - ref.float()).abs().max() <= 2 ** -7 * ref.float().abs().max()
        assert (got != ref).float().mean() < 0.01


def test_batched_over_an_fp8_cache(gen):
    seqs = [(20, 1), (0, 1), (33, 1), (7, 4)]
    kv_cache, meta = paged_case(seqs, 2, 32, 16, torch.float32, gen)
    k_scale, v_scale = 0.05, 0.02
    cache8 = torch.empty(kv_cache.shape, dtype=FP8_KV_DTYPE)
    cache8[0], cache8[1] = quantize_kv_ref(kv_cache[0], k_scale), quantize_kv_ref(kv_cache[1], v_scale)
    q = torch.randn(meta.num_tokens, 4, 32, generator=gen)
    ref = paged_attention_ref(q, cache8, meta, 0.2, None, k_scale, v_scale)
    nan_code = torch.full((), float("nan")).to(FP8_KV_DTYPE)
    spare = torch.ones(kv_cache.shape[1], dtype=torch.bool)
    spare[meta.block_tables.flatten().long()] = False
    cache8.view(torch.uint8)[:, spare] = nan_code.view(torch.uint8)  # NaN codes where none may read
    got = paged_attention_batched(q, cache8, meta, 0.2, None, k_scale, v_scale)
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=2e-6)


def test_the_dispatcher_runs_it_where_triton_does_not(gen, monkeypatch):
    kv_cache, meta = paged_case([(9, 1), (4, 1)], 2, 24, 16, torch.float32, gen)  # head_dim 24
    q = torch.randn(2, 2, 24, generator=gen)
    calls = []
    real = attention.paged_attention_batched
    monkeypatch.setattr(attention, "paged_attention_batched",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    out = attention.paged_attention(q, kv_cache, meta, 0.3)
    assert calls == [1]
    torch.testing.assert_close(out, paged_attention_ref(q, kv_cache, meta, 0.3), rtol=2e-6, atol=2e-6)
