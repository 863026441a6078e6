"""Attention of fresh prompts from the step's own K/V (kiln.kernels.prefill_fresh) against the
paged reference, directly and through the paged_attention dispatcher (interpreter, CPU)."""

import pytest
import torch

from kernel_cases import TOL, paged_case, rel_err
from kiln.kernels import attention
from kiln.kernels.attention import paged_attention, wants_fresh_kv
from kiln.kernels.attention_ref import paged_attention_ref
from kiln.kernels.prefill_fresh import fresh_prefill_attention, fresh_prefill_ok


def fresh_case(seqs, num_q_heads, num_kv_heads, head_dim, dtype, gen, block_size=16):
    """A paged case whose new tokens' K/V are also given as flat [T, Hk, D] tensors (k from a
    separate buffer, v a strided view of a fused projection, as the model has them)."""
    kv_cache, meta = paged_case(seqs, num_kv_heads, head_dim, block_size, dtype, gen)
    t = meta.num_tokens
    q = torch.randn(t, num_q_heads, head_dim, generator=gen).to(dtype)
    fused = torch.randn(t, 2, num_kv_heads * head_dim, generator=gen).to(dtype)
    k = fused[:, 0].clone().view(t, num_kv_heads, head_dim)
    v = fused[:, 1].view(t, num_kv_heads, head_dim)
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)
    flat[0, meta.slot_mapping] = k
    flat[1, meta.slot_mapping] = v
    return q, k, v, kv_cache, meta


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("config", [dict(block_m=16, block_n=16), dict(block_m=32, block_n=16),
                                    dict(block_m=64, block_n=64)])
def test_fresh_prompts_match_the_reference(group, head_dim, config, gen, poison_allocations):
    # Ragged prompts: shorter than a tile, tile multiples, ends mid-tile, a single token.
    seqs = [(0, 5), (0, 32), (0, 45), (0, 1), (0, 70)]
    q, k, v, kv_cache, meta = fresh_case(seqs, 2 * group, 2, head_dim, torch.float16, gen)
    assert fresh_prefill_ok(q, k, v)
    out = torch.empty_like(q)
    cfg = dict(config, num_warps=4, num_stages=1)
    fresh_prefill_attention(q, k, v, meta.query_start_loc, meta.max_query_len, head_dim ** -0.5,
                            out, cfg)
    ref = paged_attention_ref(q, kv_cache, meta, head_dim ** -0.5)
    assert rel_err(out, ref) < TOL[torch.float16]


def test_dispatcher_sends_trailing_fresh_prompts_to_the_fresh_kernel(gen, poison_allocations,
                                                                      monkeypatch):
    # Decodes, a chunk over cached context, then fresh prompts (the scheduler's order): the
    # fresh ones take the new kernel, the rest their paged kernels, and all match the reference.
    calls = []
    real = attention.fresh_prefill_attention

    def counting(q, k, v, query_start_loc, max_query_len, *args, **kwargs):
        calls.append((query_start_loc.tolist(), max_query_len))
        return real(q, k, v, query_start_loc, max_query_len, *args, **kwargs)

    monkeypatch.setattr(attention, "fresh_prefill_attention", counting)
    seqs = [(30, 1), (7, 1), (40, 9), (0, 20), (0, 3)]
    q, k, v, kv_cache, meta = fresh_case(seqs, 8, 2, 64, torch.float16, gen)
    assert meta.fresh_from == 3 and wants_fresh_kv(q, kv_cache, meta)
    out = paged_attention(q, kv_cache, meta, 0.125, fresh_kv=(k, v))
    ref = paged_attention_ref(q, kv_cache, meta, 0.125)
    assert rel_err(out, ref) < TOL[torch.float16]
    assert calls == [([11, 31, 34], 20)], calls
    # Without fresh K/V (or with a sliding window) everything stays on the paged kernels.
    calls.clear()
    assert rel_err(paged_attention(q, kv_cache, meta, 0.125), ref) < TOL[torch.float16]
    assert not wants_fresh_kv(q, kv_cache, meta, sliding_window=8) and calls == []


def test_fresh_from_finds_the_trailing_run_of_fresh_prompts():
    from kiln.layers.forward_context import build_attention_metadata

    def fresh_from(seqs):
        return build_attention_metadata([(s, n, [0] * 8) for s, n in seqs], 16).fresh_from

    assert fresh_from([(5, 1), (0, 9), (0, 4)]) == 1
    assert fresh_from([(0, 9), (3, 4)]) == 2  # the last one has context: none
    assert fresh_from([(0, 9), (3, 4), (0, 2)]) == 2
    assert fresh_from([(0, 2), (0, 0)]) == 2  # a sequence with no new tokens is not fresh
    assert fresh_from([(0, 9), (0, 3)]) == 0


def test_fresh_path_refuses_layouts_it_cannot_read(gen):
    q, k, v, _, _ = fresh_case([(0, 8)], 4, 2, 64, torch.float16, gen)
    assert fresh_prefill_ok(q, k, v)
    assert not fresh_prefill_ok(q.float(), k.float(), v.float())  # not a half type
    q32, k32, v32, _, _ = fresh_case([(0, 8)], 4, 2, 32, torch.float16, gen)
    assert not fresh_prefill_ok(q32, k32, v32)  # head_dim 32
    assert not fresh_prefill_ok(q, k.transpose(0, 1).contiguous().transpose(0, 1), v)
    with pytest.raises(ValueError, match="must divide"):
        fresh_prefill_attention(q, k, v, torch.tensor([0, 8], dtype=torch.int32), 8, 0.1,
                                torch.empty_like(q), dict(block_m=16, block_n=32))
