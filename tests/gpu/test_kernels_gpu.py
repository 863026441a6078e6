"""Triton kernels on CUDA against the torch references (bf16/fp16/fp32), incl. Llama-3-8B shapes.

Skipped without CUDA. Each check draws fresh random inputs and poisons every allocation with NaN,
so an output element the kernel fails to write shows up.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels.activation import silu_and_mul, silu_and_mul_ref  # noqa: E402
from kiln.kernels import attention  # noqa: E402
from kiln.kernels.attention import paged_attention, wants_fresh_kv  # noqa: E402
from kiln.kernels.attention_ref import paged_attention_ref  # noqa: E402
from kiln.kernels.rmsnorm import (fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm,  # noqa: E402
                                  rms_norm_ref)
from kiln.kernels.rotary import (apply_rotary, apply_rotary_ref, rotary_and_write_kv,  # noqa: E402
                                 rotary_and_write_kv_ref)
from kiln.layers.forward_context import build_attention_metadata  # noqa: E402
from gpu_helpers import randn, rel_err  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def paged_case(seqs, num_kv_heads, head_dim, block_size, dtype, gen, spare_blocks=5):
    """Random cache + metadata for sequences given as (cached_len, num_new); shuffled blocks."""
    need = [-(-(start + n) // block_size) for start, n in seqs]
    order = torch.randperm(sum(need) + spare_blocks, generator=gen, device="cuda").tolist()
    described = []
    for (start, n), count in zip(seqs, need):
        described.append((start, n, order[:count]))
        order = order[count:]
    num_blocks = sum(need) + spare_blocks
    kv_cache = randn(2, num_blocks, block_size, num_kv_heads, head_dim, gen=gen, dtype=dtype)
    return kv_cache, build_attention_metadata(described, block_size, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4096), (37, 4096), (5, 1000), (3, 8192)])
def test_rms_norm(dtype, shape, gen, poison_allocations):
    x = randn(*shape, gen=gen, dtype=dtype, scale=3.0)
    w = randn(shape[-1], gen=gen, dtype=dtype)
    assert rel_err(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5)) < TOL[dtype] / 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4096), (129, 4096), (7, 1000)])
def test_fused_add_rms_norm(dtype, shape, gen, poison_allocations):
    x = randn(*shape, gen=gen, dtype=dtype)
    residual = randn(*shape, gen=gen, dtype=dtype)
    w = randn(shape[-1], gen=gen, dtype=dtype)
    ref_out, ref_res = fused_add_rms_norm_ref(x, residual.clone(), w, 1e-5)
    out, new_res = fused_add_rms_norm(x, residual, w, 1e-5)
    assert new_res.data_ptr() == residual.data_ptr()
    assert torch.equal(new_res, ref_res)
    assert rel_err(out, ref_out) < TOL[dtype] / 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2 * 14336), (33, 2 * 14336), (4, 2 * 1000)])
def test_silu_and_mul(dtype, shape, gen, poison_allocations):
    x = randn(*shape, gen=gen, dtype=dtype, scale=4.0)
    assert rel_err(silu_and_mul(x), silu_and_mul_ref(x)) < TOL[dtype] / 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", [(32, 8, 128), (8, 8, 64), (28, 4, 128),
                                                               (16, 2, 256)])
def test_rotary_and_write_kv(dtype, num_q_heads, num_kv_heads, head_dim, gen):
    num_tokens, block_size, num_blocks, max_pos = 300, 16, 40, 8192
    width = (num_q_heads + 2 * num_kv_heads) * head_dim
    qkv = randn(num_tokens, width, gen=gen, dtype=dtype)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q, k, v = (t.view(num_tokens, -1, head_dim) for t in (q, k, v))
    positions = torch.randint(0, max_pos, (num_tokens,), generator=gen, device="cuda")
    slots = torch.randperm(num_blocks * block_size, generator=gen, device="cuda")[:num_tokens]
    slots[::7] = -1
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    angles = torch.arange(max_pos, device="cuda").float()[:, None] * inv_freq[None, :]
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), math.nan, dtype=dtype,
                       device="cuda")
    ref_cache = cache.clone()
    q_out = rotary_and_write_kv(q, k, v, positions, cos_sin, cache, slots)
    q_ref = rotary_and_write_kv_ref(q, k, v, positions, cos_sin, ref_cache, slots)
    assert rel_err(q_out, q_ref) < TOL[dtype] / 2
    flat, flat_ref = cache.view(2, -1, num_kv_heads, head_dim), ref_cache.view(2, -1, num_kv_heads, head_dim)
    written = slots[slots >= 0]
    assert rel_err(flat[:, written], flat_ref[:, written]) < TOL[dtype] / 2
    untouched = torch.ones(flat.shape[1], dtype=torch.bool, device="cuda")
    untouched[written] = False
    assert flat[:, untouched].isnan().all()
    # Asked for, the rotated keys also land in k_out: the same bits as in the cache.
    k_out = torch.full(k.shape, math.nan, dtype=dtype, device="cuda")
    rotary_and_write_kv(q, k, v, positions, cos_sin, cache, slots, k_out=k_out)
    keep = slots >= 0
    assert torch.equal(k_out[keep], flat[0, slots[keep]]) and not k_out.isnan().any()
    if dtype != torch.float32:
        # 16-bit: each product and the sum rounded once to the dtype, as torch's ops round them
        assert torch.equal(q_out, q_ref)
        assert torch.equal(flat[:, written], flat_ref[:, written])


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rotary(dtype, gen, poison_allocations):
    q, k = randn(77, 32, 128, gen=gen, dtype=dtype), randn(77, 8, 128, gen=gen, dtype=dtype)
    positions = torch.randint(0, 4096, (77,), generator=gen, device="cuda")
    cos_sin = randn(4096, 128, gen=gen)
    q_out, k_out = apply_rotary(q, k, positions, cos_sin)
    q_ref, k_ref = apply_rotary_ref(q, k, positions, cos_sin)
    assert rel_err(q_out, q_ref) < TOL[dtype] / 2
    assert rel_err(k_out, k_ref) < TOL[dtype] / 2
    if dtype != torch.float32:
        assert torch.equal(q_out, q_ref) and torch.equal(k_out, k_ref)


def check_attention(seqs, num_q_heads, num_kv_heads, head_dim, block_size, dtype, gen, window=None,
                    graph_max_seq_len=None):
    kv_cache, meta = paged_case(seqs, num_kv_heads, head_dim, block_size, dtype, gen)
    if graph_max_seq_len:  # as a decode CUDA graph launches: max_seq_len is max_model_len
        meta = dataclasses.replace(meta, max_seq_len=graph_max_seq_len)
    q = randn(meta.num_tokens, num_q_heads, head_dim, gen=gen, dtype=dtype)
    out = paged_attention(q, kv_cache, meta, head_dim ** -0.5, window)
    ref = paged_attention_ref(q, kv_cache, meta, head_dim ** -0.5, window)
    assert not out.isnan().any(), "an output element was not written"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"relative error {err:.2e}"


# Every dtype x GQA ratio at block size 16, plus block size 32 and sliding windows on a few (each
# extra combination is another kernel compile).
ATTN_CASES = ([(dt, g, 16, None) for dt in DTYPES for g in (1, 4, 8)]
              + [(torch.bfloat16, 4, 32, None), (torch.bfloat16, 8, 16, "w"), (torch.float16, 1, 32, "w"),
                 (torch.float32, 4, 32, "w")])


@pytest.mark.parametrize("dtype,group,block_size,window", [c[:3] + (300 if c[3] else None,) for c in ATTN_CASES])
def test_decode_attention(dtype, group, block_size, window, gen, poison_allocations, fused_reduce):
    # Ragged contexts from 1 to ~3000 keys; batch sizes that give single and split partitions.
    for batch in (1, 5, 64):
        lens = torch.randint(1, 3000, (batch,), generator=gen, device="cuda").tolist()
        lens[0] = 1
        check_attention([(n - 1, 1) for n in lens], 8 * group, 8, 128, block_size, dtype, gen, window)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [None, 100])
def test_decode_attention_graph_grid(dtype, window, gen, poison_allocations, fused_reduce):
    # Inside a decode graph the grid is sized for max_model_len (8192) and each sequence splits
    # its own keys over it: contexts of one key, less than a tile, a few tiles and thousands.
    short = [1, 50, 200, 4000]
    ragged = short + torch.randint(1, 3000, (16,), generator=gen, device="cuda").tolist()
    for lens in ([200], [4000], short, ragged):
        check_attention([(n - 1, 1) for n in lens], 32, 8, 128, 16, dtype, gen, window,
                        graph_max_seq_len=8192)


@pytest.mark.parametrize("dtype,group,block_size,window", [c[:3] + (100 if c[3] else None,) for c in ATTN_CASES])
def test_mixed_prefill_decode_attention(dtype, group, block_size, window, gen, poison_allocations):
    seqs = [(0, 300), (517, 64), (1000, 1), (0, 1), (40, 0), (129, 250), (2000, 1)]
    check_attention(seqs, 4 * group, 4, 128, block_size, dtype, gen, window)
    # Running decodes first (the scheduler's order): they take the decode kernel.
    seqs = [(1000, 1), (3, 1), (40, 0), (2500, 1), (0, 300), (517, 64), (2000, 1)]
    check_attention(seqs, 4 * group, 4, 128, block_size, dtype, gen, window)


@pytest.mark.parametrize("head_dim", [64, 256])
def test_attention_other_head_dims(head_dim, gen, poison_allocations):
    check_attention([(0, 200), (300, 1)], 16, 4, head_dim, 16, torch.bfloat16, gen)
    check_attention([(300, 1), (1000, 1)], 16, 4, head_dim, 16, torch.bfloat16, gen)


def test_llama3_8b_prefill_2048(gen, poison_allocations):
    check_attention([(0, 2048)], 32, 8, 128, 16, torch.bfloat16, gen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group,head_dim", [(4, 128), (1, 128), (4, 64)])
def test_fresh_prompts_read_their_own_kv(dtype, group, head_dim, gen, poison_allocations,
                                         monkeypatch):
    """Fresh prompts at the end of a batch take the kernel that reads K/V from the step's tensors
    (through tensor descriptors); results match the paged reference, alone and after decodes
    and a chunk over cached context."""
    fresh_calls = []
    real = attention.fresh_prefill_attention
    monkeypatch.setattr(attention, "fresh_prefill_attention",
                        lambda *a, **k: fresh_calls.append(1) or real(*a, **k))
    for seqs in ([(0, 2048)], [(0, 300), (0, 1), (0, 517), (0, 64)],
                 [(1000, 1), (3, 1), (517, 64), (0, 300), (0, 129)], [(0, 128)] * 64):
        kv_cache, meta = paged_case(seqs, 8, head_dim, 16, dtype, gen)
        t = meta.num_tokens
        q = randn(t, 8 * group, head_dim, gen=gen, dtype=dtype)
        flat = kv_cache.view(2, -1, 8, head_dim)
        k = flat[0, meta.slot_mapping].clone()
        fused = torch.empty(t, 3, 8 * head_dim, dtype=dtype, device="cuda")  # v as a strided view
        fused[:, 1] = flat[1, meta.slot_mapping].view(t, -1)
        v = fused[:, 1].view(t, 8, head_dim)
        assert wants_fresh_kv(q, kv_cache, meta)
        calls = len(fresh_calls)
        out = paged_attention(q, kv_cache, meta, head_dim ** -0.5, fresh_kv=(k, v))
        assert len(fresh_calls) == calls + 1
        ref = paged_attention_ref(q, kv_cache, meta, head_dim ** -0.5)
        assert not out.isnan().any(), "an output element was not written"
        err = rel_err(out, ref)
        assert err < TOL[dtype], f"{seqs[:3]}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 5, 16, 24, 40, 300])
def test_decode_attention_quantizes_its_output(batch, dtype, gen, poison_allocations):
    """quant_dtype=fp8 (an fp8 o_proj reads the output): decode batches of up to 16 rows whose
    kernel merges its partitions, and batches that run one partition per sequence (40 and 300
    sequences of 8 kv heads on an H200's 132 SMs), quantize the rows in the kernel; others (24)
    through quantize_rows. Either way the codes and scales of quant_per_token on the plain
    output, bit for bit, eagerly and in a graph grid (max_seq_len 8192)."""
    from kiln.kernels import qmm_common, quant_act

    for graph in (False, True):
        lens = torch.randint(1, 3000, (batch,), generator=gen, device="cuda").tolist()
        lens[0] = 1
        kv_cache, meta = paged_case([(n - 1, 1) for n in lens], 8, 128, 16, dtype, gen)
        if graph:
            meta = dataclasses.replace(meta, max_seq_len=8192)
        q = randn(meta.num_tokens, 32, 128, gen=gen, dtype=dtype)
        plain = paged_attention(q, kv_cache, meta, 128 ** -0.5)
        rows = paged_attention(q, kv_cache, meta, 128 ** -0.5, quant_dtype=torch.float8_e4m3fn)
        want_q, want_s = quant_act.quant_per_token(plain.reshape(batch, -1), torch.float8_e4m3fn)
        assert rows.m == batch and rows.shape == (batch, 32 * 128)
        assert torch.equal(rows.q[:batch].view(torch.uint8), want_q[:batch].view(torch.uint8))
        assert torch.equal(rows.scale[:batch], want_s[:batch])
        assert not bool(qmm_common.split_locks(q.device).any())


def test_decode_attention_replays_in_cuda_graph(gen, fused_reduce):
    """Captured once with max_seq_len fixed; replayed with new lengths and tables on the device."""
    block_size, num_kv_heads, head_dim, batch, max_len = 16, 8, 128, 8, 2048
    max_blocks = max_len // block_size
    num_blocks = batch * max_blocks
    kv_cache = randn(2, num_blocks, block_size, num_kv_heads, head_dim, gen=gen, dtype=torch.bfloat16)
    tables = [list(range(b * max_blocks, (b + 1) * max_blocks)) for b in range(batch)]
    meta = build_attention_metadata([(max_len - 1, 1, t) for t in tables], block_size, device="cuda")
    q = randn(batch, 32, head_dim, gen=gen, dtype=torch.bfloat16)
    scale = head_dim ** -0.5
    paged_attention(q, kv_cache, meta, scale)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_attention(q, kv_cache, meta, scale)
    for _ in range(3):
        lens = torch.randint(1, max_len + 1, (batch,), generator=gen, device="cuda").tolist()
        perm = torch.randperm(num_blocks, generator=gen, device="cuda").tolist()
        new = [(n - 1, 1, perm[b * max_blocks:(b + 1) * max_blocks]) for b, n in enumerate(lens)]
        step = build_attention_metadata(new, block_size, device="cuda")
        meta.seq_lens.copy_(step.seq_lens)
        meta.block_tables.copy_(step.block_tables)
        q.copy_(randn(batch, 32, head_dim, gen=gen, dtype=torch.bfloat16))
        out.fill_(math.nan)
        graph.replay()
        ref = paged_attention_ref(q, kv_cache, step, scale)
        assert rel_err(out, ref) < TOL[torch.bfloat16]
