"""FP8 (float8_e4m3fn, per-layer scaled) KV cache: the references' semantics, and the Triton
write and attention kernels against them (interpreter, CPU).

The Triton 3.6 interpreter converts float32 to fp8 wrongly (round-half-up, and a mantissa carry
that does not reach the exponent), while the GPU converts exactly (round to nearest even,
saturating). So the write kernel is checked two ways here: bytes exactly equal to the reference
on inputs whose quantized values are exact (the interpreter's rounding never runs), and bytes
exactly equal everywhere with the interpreter's fp32 -> fp8 conversion replaced by torch's.
tests/gpu/test_fp8_kv_gpu.py checks the real conversion on CUDA.
"""

import math

import numpy as np
import pytest
import torch

from kernel_cases import TOL, paged_case, rel_err
from kiln.kernels import attention, decode_attention, rotary
from kiln.kernels.attention import paged_attention
from kiln.kernels.attention_ref import (FP8_E4M3_MAX, FP8_KV_DTYPE, dequantize_kv_ref,
                                        paged_attention_ref, quantize_kv_ref, write_kv_ref)
from kiln.kernels.rotary import apply_rotary_ref, rotary_and_write_kv, rotary_and_write_kv_ref

# Every finite e4m3 value (both signs), as float32: 0x7f / 0xff are the NaN codes.
FP8_GRID = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8_KV_DTYPE).float()
FP8_GRID = FP8_GRID[~FP8_GRID.isnan()]


@pytest.fixture
def exact_fp8_conversion(monkeypatch):
    """Make the interpreter convert float32 -> fp8 e4m3 exactly (torch's rounding, as the GPU)."""
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._convert_float

    def convert(data, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.float8e4nv:
            src = torch.from_numpy(np.ascontiguousarray(data).view(np.float32))
            return src.to(FP8_KV_DTYPE).view(torch.uint8).numpy().reshape(data.shape)
        return original(data, input_dtype, output_dtype, rounding_mode)

    monkeypatch.setattr(interpreter, "_convert_float", convert)


@pytest.fixture
def no_reference(monkeypatch):
    """Fail if a dispatcher falls back to the reference (the Triton path must run)."""
    def refuse(*args, **kwargs):
        raise AssertionError("dispatcher fell back to the torch reference")

    monkeypatch.setattr(attention, "paged_attention_batched", refuse)
    monkeypatch.setattr(rotary, "rotary_and_write_kv_ref", refuse)


def fp8_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


# ------------------------------------------------------------------------------ the references
@pytest.mark.parametrize("scale", [1.0, 0.037, 5.5])
def test_reference_round_trip_error_bound(scale, gen):
    # Magnitudes from far below the smallest subnormal to far above the saturation point.
    x = torch.randn(4096, generator=gen) * torch.exp2(torch.randint(-14, 12, (4096,), generator=gen)) * scale
    back = dequantize_kv_ref(quantize_kv_ref(x, scale), scale)
    y = x / scale
    inside = y.abs() <= FP8_E4M3_MAX
    # e4m3: 3 mantissa bits, so rounding to nearest errs by at most 2^-4 relative for normals
    # (|y| >= 2^-6) and half the subnormal step 2^-9 below.
    bound = torch.where(y.abs() >= 2 ** -6, y.abs() * 2 ** -4, torch.full_like(y, 2 ** -10)) * scale
    err = (back - x).abs()
    assert bool((err[inside] <= bound[inside] * (1 + 1e-6)).all())
    # Out of range saturates at +-448 * scale instead of becoming NaN.
    assert bool((back[~inside] == torch.sign(x[~inside]) * FP8_E4M3_MAX * scale).all())
    assert not back.isnan().any()


def test_reference_quantize_is_round_to_nearest_even_of_x_over_scale():
    # Grid values and exact midpoints between neighbours (ties go to the even code).
    pos = FP8_GRID[FP8_GRID > 0].sort().values
    mids = (pos[:-1] + pos[1:]) / 2
    q = quantize_kv_ref(mids * 0.25, 0.25)
    lo_even = (fp8_bytes(pos[:-1].to(FP8_KV_DTYPE)) % 2) == 0
    expected = torch.where(lo_even, pos[:-1], pos[1:])
    assert torch.equal(q.float(), expected)
    assert torch.equal(quantize_kv_ref(FP8_GRID * 0.25, 0.25).float(), FP8_GRID)


def test_write_kv_ref_fp8_cache_layout_and_untouched_slots(gen):
    num_blocks, block_size, heads, dim = 3, 4, 2, 8
    cache = torch.zeros(2, num_blocks, block_size, heads, dim, dtype=FP8_KV_DTYPE)
    fp8_bytes(cache).fill_(0x7F)  # NaN everywhere: unwritten slots stay NaN
    k = torch.randn(5, heads, dim, generator=gen)
    v = torch.randn(5, heads, dim, generator=gen) * 30
    slots = torch.tensor([7, -1, 0, 11, 4])
    write_kv_ref(k, v, cache, slots, k_scale=0.01, v_scale=0.2)
    flat = cache.view(2, -1, heads, dim)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(fp8_bytes(flat[0, s]), fp8_bytes(quantize_kv_ref(k[t], 0.01)))
            assert torch.equal(fp8_bytes(flat[1, s]), fp8_bytes(quantize_kv_ref(v[t], 0.2)))
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert bool(flat[:, untouched].float().isnan().all())


def test_reference_attention_reads_dequantized_values(gen):
    # Attention over an fp8 cache == attention over the same values dequantized into float32.
    kv_cache, meta = paged_case([(0, 9), (30, 1), (12, 4)], 2, 16, 8, torch.float32, gen)
    cache8 = torch.empty_like(kv_cache, dtype=FP8_KV_DTYPE)
    cache8[0] = quantize_kv_ref(kv_cache[0] * 3, 0.5)
    cache8[1] = quantize_kv_ref(kv_cache[1] * 3, 0.125)
    dequant = torch.stack([dequantize_kv_ref(cache8[0], 0.5), dequantize_kv_ref(cache8[1], 0.125)])
    q = torch.randn(meta.num_tokens, 4, 16, generator=gen)
    out = paged_attention_ref(q, cache8, meta, 0.25, None, 0.5, 0.125)
    assert torch.equal(out, paged_attention_ref(q, dequant, meta, 0.25))


# ------------------------------------------------------------------------------ Triton: writes
def cos_sin_cache(max_pos: int, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def write_case(num_tokens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, gen):
    width = (num_q_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width, generator=gen).to(dtype)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q = q.view(num_tokens, num_q_heads, head_dim)
    k = k.view(num_tokens, num_kv_heads, head_dim)
    v = v.view(num_tokens, num_kv_heads, head_dim)
    num_blocks = -(-num_tokens // block_size) + 2
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen)[:2]] = -1
    cache = torch.zeros(2, num_blocks, block_size, num_kv_heads, head_dim, dtype=FP8_KV_DTYPE)
    fp8_bytes(cache).fill_(0x7F)
    return q, k, v, slots, cache


def check_written_bytes(cache, ref_cache, slots, num_kv_heads, head_dim):
    flat = fp8_bytes(cache).view(2, -1, num_kv_heads, head_dim)
    flat_ref = fp8_bytes(ref_cache).view(2, -1, num_kv_heads, head_dim)
    assert torch.equal(flat, flat_ref), f"{int((flat != flat_ref).sum())} bytes differ"
    untouched = torch.ones(flat.shape[1], dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert bool((flat[:, untouched] == 0x7F).all()), "a slot outside slot_mapping was written"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_write_exact_on_representable_values(dtype, gen, no_reference):
    # Position 0 rotates by the identity (cos 1, sin 0), and k, v are fp8 grid values times a
    # power-of-two scale (plus some beyond the range): x / scale is then exact and either on
    # the grid or clamped to 448, so no fp8 rounding happens, even in the interpreter.
    num_tokens, hq, hk, dim, bs = 9, 4, 2, 16, 4
    q, k, v, slots, cache = write_case(num_tokens, hq, hk, dim, bs, dtype, gen)
    k_scale, v_scale = 2.0 ** -5, 4.0
    # The interpreter also turns -0.0 into +0.0 (same value; the GPU keeps the sign): no -0.0.
    values = FP8_GRID[~((FP8_GRID == 0) & FP8_GRID.signbit())]
    for t, s in ((k, k_scale), (v, v_scale)):
        grid = values[torch.randint(0, values.numel(), t.shape, generator=gen)]
        grid[..., :2] = torch.tensor([1000.0, -3000.0])  # saturate to +-448
        t.copy_((grid * s).to(dtype))
    positions = torch.zeros(num_tokens, dtype=torch.int64)
    ref_cache = cache.clone()
    q_out = rotary_and_write_kv(q, k, v, positions, cos_sin_cache(8, dim), cache, slots,
                                k_scale, v_scale)
    q_ref = apply_rotary_ref(q, k, positions, cos_sin_cache(8, dim))[0]
    write_kv_ref(k, v, ref_cache, slots, k_scale, v_scale)
    assert torch.equal(q_out, q_ref)
    check_written_bytes(cache, ref_cache, slots, hk, dim)
    assert float(ref_cache.float().nan_to_num(0.0).abs().amax()) == FP8_E4M3_MAX


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim,block_size",
                         [(4, 4, 16, 16), (8, 2, 64, 32), (12, 3, 32, 16)])
def test_triton_write_matches_reference_bytes(dtype, num_q_heads, num_kv_heads, head_dim, block_size,
                                              gen, exact_fp8_conversion):
    num_tokens, max_pos = 11, 300
    q, k, v, slots, cache = write_case(num_tokens, num_q_heads, num_kv_heads, head_dim, block_size,
                                       dtype, gen)
    k.mul_(4.0)
    v[0, 0, :4] = torch.tensor([500.0, -500.0, 1e-6, 0.0]).to(dtype)  # saturation, subnormals
    positions = torch.randint(0, max_pos, (num_tokens,), generator=gen)
    cs = cos_sin_cache(max_pos, head_dim)
    k_scale, v_scale = 0.0173, 0.31
    ref_cache = cache.clone()
    q_out = rotary_and_write_kv(q, k, v, positions, cs, cache, slots, k_scale, v_scale)
    q_ref = rotary_and_write_kv_ref(q, k, v, positions, cs, ref_cache, slots, k_scale, v_scale)
    assert rel_err(q_out, q_ref) < TOL[dtype]
    check_written_bytes(cache, ref_cache, slots, num_kv_heads, head_dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_codes_beside_the_cache_for_fresh_prompts(dtype, gen, exact_fp8_conversion):
    """With an fp8 cache, k_out / v_out (float16) get every token's codes, padding tokens too:
    where a slot is written, the very bytes of the cache; kernel and reference agree."""
    num_tokens, max_pos = 11, 300
    q, k, v, slots, cache = write_case(num_tokens, 8, 2, 32, 16, dtype, gen)
    k.mul_(4.0)
    v[0, 0, :4] = torch.tensor([500.0, -500.0, 1e-6, 0.0]).to(dtype)
    positions = torch.randint(0, max_pos, (num_tokens,), generator=gen)
    cs = cos_sin_cache(max_pos, 32)
    k_scale, v_scale = 0.0173, 0.31
    ref_cache = cache.clone()
    outs = [torch.full(k.shape, math.nan, dtype=torch.float16) for _ in range(4)]
    rotary_and_write_kv(q, k, v, positions, cs, cache, slots, k_scale, v_scale, *outs[:2])
    rotary_and_write_kv_ref(q, k, v, positions, cs, ref_cache, slots, k_scale, v_scale, *outs[2:])
    check_written_bytes(cache, ref_cache, slots, 2, 32)
    flat = cache.view(2, -1, 2, 32)
    keep = slots >= 0
    for which, (got, want) in enumerate(((outs[0], outs[2]), (outs[1], outs[3]))):
        assert not got.isnan().any(), "a token's codes were not written"
        assert torch.equal(got, want), f"{int((got != want).sum())} codes differ ({'kv'[which]})"
        assert torch.equal(fp8_bytes(got[keep].to(FP8_KV_DTYPE)), fp8_bytes(flat[which, slots[keep]]))
    with pytest.raises(ValueError, match="v_out"):
        rotary_and_write_kv(q, k, v, positions, cs, cache, slots, k_scale, v_scale, outs[0])


def test_triton_write_without_conversion_fix_is_within_interpreter_error(gen):
    # The plain interpreter: where it rounds correctly the bytes match, and it errs on a minority
    # of elements only (its known rounding bug), never on unwritten slots.
    q, k, v, slots, cache = write_case(16, 4, 2, 32, 16, torch.float32, gen)
    positions = torch.randint(0, 64, (16,), generator=gen)
    cs = cos_sin_cache(64, 32)
    ref_cache = cache.clone()
    rotary_and_write_kv(q, k, v, positions, cs, cache, slots, 0.01, 0.02)
    rotary_and_write_kv_ref(q, k, v, positions, cs, ref_cache, slots, 0.01, 0.02)
    written = slots[slots >= 0]
    flat = cache.view(2, -1, 2, 32)[:, written].float()
    flat_ref = ref_cache.view(2, -1, 2, 32)[:, written].float()
    assert (flat == flat_ref).float().mean() > 0.75
    assert bool(((flat - flat_ref).abs() <= flat_ref.abs() * 0.5 + 2 ** -9).all())


# ------------------------------------------------------------------------------ Triton: reads
def fp8_paged_case(seqs, num_kv_heads, head_dim, block_size, gen, k_scale, v_scale):
    kv_cache, meta = paged_case(seqs, num_kv_heads, head_dim, block_size, torch.float32, gen)
    cache8 = torch.empty(kv_cache.shape, dtype=FP8_KV_DTYPE)
    # Values spread over a wide range, so subnormal and large codes are both read.
    spread = torch.exp2(torch.randint(-6, 6, kv_cache.shape[:-1], generator=gen)).unsqueeze(-1)
    cache8[0] = quantize_kv_ref(kv_cache[0] * spread[0] * k_scale, k_scale)
    cache8[1] = quantize_kv_ref(kv_cache[1] * spread[1] * v_scale, v_scale)
    return cache8, meta


def run_fp8_case(seqs, num_q_heads, num_kv_heads, head_dim, block_size, dtype, gen, window=None,
                 k_scale=0.043, v_scale=0.7):
    cache8, meta = fp8_paged_case(seqs, num_kv_heads, head_dim, block_size, gen, k_scale, v_scale)
    q = (torch.randn(meta.num_tokens, num_q_heads, head_dim, generator=gen) * 0.1).to(dtype)
    scale = head_dim ** -0.5
    ref = paged_attention_ref(q, cache8, meta, scale, window, k_scale, v_scale)
    out = attention.paged_attention(q, cache8, meta, scale, window, k_scale, v_scale)
    assert out.shape == ref.shape and out.dtype == dtype
    assert not out.isnan().any(), "some output element was not written"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"relative error {err:.2e}"
    return out, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4])
def test_triton_decode_fp8(dtype, group, gen, poison_allocations, no_reference):
    run_fp8_case([(0, 1), (16, 1), (40, 1), (52, 1)], 2 * group, 2, 32, 16, dtype, gen)


@pytest.mark.parametrize("window", [None, 70])
def test_triton_decode_split_partitions_fp8(window, gen, poison_allocations, no_reference,
                                            monkeypatch):
    # Split contexts (the reduce kernel runs): v_scale must apply once, before the merge.
    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    run_fp8_case([(300, 1), (37, 1), (129, 1)], 4, 2, 16, 16, torch.float32, gen, window)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_prefill_fp8(dtype, gen, poison_allocations, no_reference):
    run_fp8_case([(0, 37), (20, 5), (50, 1), (33, 0), (70, 19)], 8, 2, 32, 16, dtype, gen)


def test_triton_prefill_sliding_window_fp8(gen, poison_allocations, no_reference):
    run_fp8_case([(0, 40), (30, 9)], 4, 2, 16, 16, torch.float32, gen, window=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_read_is_exact_with_one_key(dtype, gen, no_reference, monkeypatch):
    # A single visible key has softmax weight exactly 1, so the output is v8 * v_scale: the
    # kernels' fp8 -> float conversion and the scaling must then equal the reference bit for bit.
    v_scale = 0.0371
    for max_query_len in (1, 2):  # decode path, then prefill path
        seqs = [(0, 1), (0, 1)] if max_query_len == 1 else [(0, 1), (0, 2)]
        cache8, meta = fp8_paged_case(seqs, 2, 16, 16, gen, 0.5, v_scale)
        # Put every finite fp8 code into the first token's values (both heads, 2 x 16 = 32 per
        # sequence's block; the grid cycles through all codes over a few draws).
        codes = FP8_GRID[torch.randperm(FP8_GRID.numel(), generator=gen)[:32]].view(2, 16)
        first_slots = meta.block_tables[:, 0].long()
        for b in first_slots.tolist():
            cache8[1, b, 0] = codes.to(FP8_KV_DTYPE)
        q = torch.randn(meta.num_tokens, 4, 16, generator=gen).to(dtype)
        out = attention.paged_attention(q, cache8, meta, 0.25, None, 0.5, v_scale)
        expected = dequantize_kv_ref(codes.to(FP8_KV_DTYPE), v_scale)  # [Hk, D]
        first_tokens = meta.query_start_loc[:-1].long()
        got = out[first_tokens].float().view(-1, 2, 2, 16)  # [seq, kv head, group, D]
        want = expected.to(dtype).float()[None, :, None, :].expand_as(got)
        assert torch.equal(got, want)


def test_scales_are_ignored_for_non_fp8_caches(gen):
    kv_cache, meta = paged_case([(0, 9), (20, 1)], 2, 16, 16, torch.float32, gen)
    q = torch.randn(meta.num_tokens, 4, 16, generator=gen)
    plain = paged_attention(q, kv_cache, meta, 0.25)
    assert torch.equal(paged_attention(q, kv_cache, meta, 0.25, None, 7.0, 0.1), plain)
    assert torch.equal(paged_attention_ref(q, kv_cache, meta, 0.25, None, 7.0, 0.1),
                       paged_attention_ref(q, kv_cache, meta, 0.25))
    q3, k3, v3, slots, _ = write_case(6, 4, 2, 16, 4, torch.float32, gen)
    caches = [torch.zeros(2, 4, 4, 2, 16) for _ in range(2)]
    pos = torch.arange(6)
    out_a = rotary_and_write_kv(q3, k3, v3, pos, cos_sin_cache(8, 16), caches[0], slots)
    out_b = rotary_and_write_kv(q3, k3, v3, pos, cos_sin_cache(8, 16), caches[1], slots, 7.0, 0.1)
    assert torch.equal(out_a, out_b) and torch.equal(caches[0], caches[1])


def test_fp8_grid_sanity():
    # The grid the tests draw from: 126 finite magnitudes per sign (incl. zero), max 448.
    assert FP8_GRID.numel() == 254 and float(FP8_GRID.max()) == FP8_E4M3_MAX
    assert math.isclose(float(FP8_GRID[FP8_GRID > 0].min()), 2 ** -9)


def test_ptx_widening_only_for_cuda_fp8_caches():
    # The PTX widening (sm_89+) never applies off CUDA, to other caches or to a float32 q; the
    # CUDA cases run in tests/gpu.
    q = torch.zeros(2, 4, 16, dtype=torch.bfloat16)
    fp8_cache = torch.zeros(2, 4, 4, 2, 16, dtype=torch.float8_e4m3fn)
    assert not decode_attention.fp8_asm_ok(q, fp8_cache)
    assert not decode_attention.fp8_asm_ok(q, fp8_cache.to(torch.bfloat16))
    assert not decode_attention.fp8_asm_ok(q.float(), fp8_cache)
