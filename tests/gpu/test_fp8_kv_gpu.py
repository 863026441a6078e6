"""FP8 (float8_e4m3fn, per-layer scaled) KV cache on CUDA: Triton write and attention kernels
against the torch references in bf16/fp16/fp32, CUDA-graph replay, and a tiny model end to end.

Skipped without CUDA. Unlike the CPU interpreter, the GPU converts float32 -> e4m3 exactly
(round to nearest even, saturating), so written values bytes are compared exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels import attention, attention_tiles, decode_attention, decode_gluon  # noqa: E402
from kiln.kernels.attention import paged_attention  # noqa: E402
from kiln.kernels.attention_ref import (FP8_E4M3_MAX, FP8_KV_DTYPE, dequantize_kv_ref,  # noqa: E402
                                        paged_attention_ref, quantize_kv_ref)
from kiln.kernels.rotary import rotary_and_write_kv, rotary_and_write_kv_ref  # noqa: E402
from kiln.layers.forward_context import build_attention_metadata  # noqa: E402
from gpu_helpers import randn, rel_err  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
NAN_CODE = 0x7F


def cos_sin_cache(max_pos: int, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    angles = torch.arange(max_pos, device="cuda").float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


# --------------------------------------------------------------------------------- cache write
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", [(32, 8, 128), (8, 8, 64), (28, 4, 128),
                                                               (16, 2, 256)])
def test_rotary_and_write_kv_fp8(dtype, num_q_heads, num_kv_heads, head_dim, gen):
    num_tokens, block_size, num_blocks, max_pos = 300, 16, 40, 8192
    width = (num_q_heads + 2 * num_kv_heads) * head_dim
    qkv = randn(num_tokens, width, gen=gen, dtype=dtype, scale=3.0)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q, k, v = (t.view(num_tokens, -1, head_dim) for t in (q, k, v))
    # Token 1 (token 0 is a padding token below): saturation, a subnormal, zero.
    v[1, 0, :4] = torch.tensor([1e4, -1e4, 1e-7, 0.0], device="cuda").to(dtype)
    positions = torch.randint(0, max_pos, (num_tokens,), generator=gen, device="cuda")
    slots = torch.randperm(num_blocks * block_size, generator=gen, device="cuda")[:num_tokens]
    slots[::7] = -1
    cache = torch.empty(2, num_blocks, block_size, num_kv_heads, head_dim, dtype=FP8_KV_DTYPE,
                        device="cuda")
    cache.view(torch.uint8).fill_(NAN_CODE)
    ref_cache = cache.clone()
    k_scale, v_scale = 0.0173, 0.031
    cs = cos_sin_cache(max_pos, head_dim)
    q_out = rotary_and_write_kv(q, k, v, positions, cs, cache, slots, k_scale, v_scale)
    q_ref = rotary_and_write_kv_ref(q, k, v, positions, cs, ref_cache, slots, k_scale, v_scale)
    assert rel_err(q_out, q_ref) < TOL[dtype] / 2
    flat = cache.view(torch.uint8).view(2, -1, num_kv_heads, head_dim)
    flat_ref = ref_cache.view(torch.uint8).view(2, -1, num_kv_heads, head_dim)
    written = slots[slots >= 0]
    # Values are not rotated: their bytes must equal the reference's exactly.
    assert torch.equal(flat[1, written], flat_ref[1, written])
    # Rotated keys: kernel and reference round the same products to the input dtype, but a
    # rounding that differs by one ulp (the compiler may drop a round trip) is amplified where
    # the two products cancel. Each stored key must therefore be within one e4m3 step plus the rotation's
    # rounding budget (a few ulps of |x1 cos| + |x2 sin|) of the reference's, and differ rarely.
    got = flat[0, written].view(FP8_KV_DTYPE).float()
    want = flat_ref[0, written].view(FP8_KV_DTYPE).float()
    keep = slots >= 0
    kk, pos = k[keep].float(), positions[keep]
    cs_t = cs.index_select(0, pos.long()).to(dtype).float()
    cos_h, sin_h = cs_t.chunk(2, dim=-1)
    cos_f = torch.cat([cos_h, cos_h], -1)[:, None, :]
    sin_f = torch.cat([sin_h, sin_h], -1)[:, None, :]
    swapped = torch.cat(kk.chunk(2, dim=-1)[::-1], dim=-1)
    unit = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}[dtype]
    budget = 4 * unit * (kk.abs() * cos_f.abs() + swapped.abs() * sin_f.abs()) / k_scale
    mag = torch.maximum(got.abs(), want.abs()).clamp_min(2.0 ** -6)
    e4m3_step = torch.exp2(torch.floor(torch.log2(mag)) - 3)
    assert bool(((got - want).abs() <= e4m3_step + budget).all())
    # Measured on an H200: 1.9-2.0% of bf16 keys and under 1% of fp16 keys take the neighbouring
    # code (a bf16 ulp is coarse next to e4m3's step); float32 rotates with no rounding between.
    assert float((got != want).float().mean()) < (5e-2 if dtype == torch.bfloat16 else 1e-2)
    untouched = torch.ones(flat.shape[1], dtype=torch.bool, device="cuda")
    untouched[written] = False
    assert bool((flat[:, untouched] == NAN_CODE).all())
    assert float(ref_cache[1].float().nan_to_num(0.0).abs().max()) == FP8_E4M3_MAX


# ------------------------------------------------------------------------------------ attention
def fp8_paged_case(seqs, num_kv_heads, head_dim, block_size, gen, k_scale, v_scale, spare_blocks=5):
    """A random fp8 cache (values spread over the e4m3 range) + metadata; shuffled blocks."""
    need = [-(-(start + n) // block_size) for start, n in seqs]
    num_blocks = sum(need) + spare_blocks
    order = torch.randperm(num_blocks, generator=gen, device="cuda").tolist()
    described = []
    for (start, n), count in zip(seqs, need):
        described.append((start, n, order[:count]))
        order = order[count:]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    spread = torch.exp2(torch.randint(-6, 6, shape[:-1], generator=gen, device="cuda")).unsqueeze(-1)
    cache = torch.empty(2, *shape, dtype=FP8_KV_DTYPE, device="cuda")
    cache[0] = quantize_kv_ref(randn(*shape, gen=gen) * spread * k_scale, k_scale)
    cache[1] = quantize_kv_ref(randn(*shape, gen=gen) * spread * v_scale, v_scale)
    return cache, build_attention_metadata(described, block_size, device="cuda")


def check_attention(seqs, num_q_heads, num_kv_heads, head_dim, block_size, dtype, gen, window=None,
                    k_scale=0.013, v_scale=0.21):
    cache, meta = fp8_paged_case(seqs, num_kv_heads, head_dim, block_size, gen, k_scale, v_scale)
    q = randn(meta.num_tokens, num_q_heads, head_dim, gen=gen, dtype=dtype, scale=0.1)
    scale = head_dim ** -0.5
    out = paged_attention(q, cache, meta, scale, window, k_scale, v_scale)
    ref = paged_attention_ref(q, cache, meta, scale, window, k_scale, v_scale)
    assert not out.isnan().any(), "an output element was not written"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"relative error {err:.2e}"


ATTN_CASES = ([(dt, g, 16, None) for dt in DTYPES for g in (1, 4, 8)]
              + [(torch.bfloat16, 4, 32, None), (torch.bfloat16, 8, 16, "w"), (torch.float16, 1, 32, "w")])


@pytest.mark.parametrize("dtype,group,block_size,window", [c[:3] + (300 if c[3] else None,) for c in ATTN_CASES])
def test_decode_attention_fp8(dtype, group, block_size, window, gen, poison_allocations,
                              fused_reduce):
    for batch in (1, 5, 64):  # single and split partitions
        lens = torch.randint(1, 3000, (batch,), generator=gen, device="cuda").tolist()
        lens[0] = 1
        check_attention([(n - 1, 1) for n in lens], 8 * group, 8, 128, block_size, dtype, gen, window)


@pytest.mark.parametrize("asm", ["0", "1"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_attention_fp8_both_widenings(asm, dtype, gen, poison_allocations, monkeypatch):
    # KILN_FP8_KV_ASM=1 (the default on sm_89+) reads the cache as words widened by PTX, =0
    # leaves the conversion to Triton; both at the small-batch tile and at the large-batch one.
    monkeypatch.setenv("KILN_FP8_KV_ASM", asm)
    monkeypatch.setenv("KILN_ATTN_GLUON", "0")  # the Triton kernel's large tile
    if asm == "1":
        q = torch.zeros(1, 32, 128, dtype=dtype, device="cuda")
        cache = torch.zeros(2, 1, 16, 8, 128, dtype=FP8_KV_DTYPE, device="cuda")
        sm89 = torch.cuda.get_device_capability() >= (8, 9)
        assert decode_attention.fp8_asm_ok(q, cache) == sm89
    for batch in (3, 100):
        lens = torch.randint(1, 600, (batch,), generator=gen, device="cuda").tolist()
        check_attention([(n - 1, 1) for n in lens], 32, 8, 128, 16, dtype, gen)


@pytest.mark.parametrize("keys_wide", ["0", "1"])
@pytest.mark.parametrize("late", ["0", "1"])
@pytest.mark.parametrize("window", [None, 200])
def test_decode_attention_fp8_values_late_or_beside_keys(late, keys_wide, window, gen,
                                                          poison_allocations, monkeypatch):
    # KILN_ATTN_LATE_V=1 (the default): the large-batch tile reads each tile's values after its
    # softmax; =0 beside its keys. KILN_ATTN_KEYS_WIDE=1 (the default): its scores are K Q^T;
    # =0 Q K^T. 100 sequences take the large tile, 3 the small one.
    monkeypatch.setenv("KILN_ATTN_LATE_V", late)
    monkeypatch.setenv("KILN_ATTN_KEYS_WIDE", keys_wide)
    monkeypatch.setenv("KILN_ATTN_GLUON", "0")  # the Triton kernel's large tile
    for batch in (3, 100):
        lens = torch.randint(1, 700, (batch,), generator=gen, device="cuda").tolist()
        check_attention([(n - 1, 1) for n in lens], 32, 8, 128, 16, torch.bfloat16, gen, window)


@pytest.mark.parametrize("tile", [(32, 3, False), (32, 2, False), (16, 4, False), (32, 3, True),
                                  (16, 4, True)])
@pytest.mark.parametrize("dtype,group,block_size", [(torch.bfloat16, 4, 16), (torch.float16, 8, 16),
                                                    (torch.bfloat16, 7, 32), (torch.bfloat16, 1, 16),
                                                    (torch.float16, 16, 16)])
def test_decode_attention_fp8_gluon(tile, dtype, group, block_size, gen, poison_allocations,
                                    monkeypatch):
    # KILN_ATTN_GLUON=1: large decode batches over an fp8 cache run the one-warp Gluon kernel
    # (kiln.kernels.decode_gluon); contexts around its tile edges, then spread to 700 keys.
    monkeypatch.setenv("KILN_ATTN_GLUON", "1")
    monkeypatch.setattr(decode_gluon, "DEFAULT_TILE", tile)
    launched = []
    real = decode_gluon.decode_fp8
    monkeypatch.setattr(decode_gluon, "decode_fp8",
                        lambda *a, **k: (launched.append((a[0].shape[0], a[8])), real(*a, **k)))
    lens = torch.randint(1, 700, (100,), generator=gen, device="cuda").tolist()
    lens[:10] = [1, 2, 15, 16, 17, 31, 32, 33, 48, 64]
    check_attention([(n - 1, 1) for n in lens], 8 * group, 8, 128, block_size, dtype, gen)
    # groups over 8 take the query-heads-as-rows kernel whatever the tile asks
    assert launched == [(100, tile[2] and group <= 8)]


def test_decode_attention_fp8_gluon_strided_q_and_scales(gen, poison_allocations, monkeypatch):
    # q and out as views into wider rows (q is a slice of the qkv projection in the engine),
    # scales far from 1, and one zero-length query in the batch.
    monkeypatch.setenv("KILN_ATTN_GLUON", "1")
    seqs = [(n - 1, 1) for n in torch.randint(1, 400, (60,), generator=gen, device="cuda").tolist()]
    seqs.insert(5, (50, 0))
    k_scale, v_scale = 3.7, 0.0021
    cache, meta = fp8_paged_case(seqs, 8, 128, 16, gen, k_scale, v_scale)
    wide = randn(meta.num_tokens, 48, 128, gen=gen, dtype=torch.bfloat16, scale=0.1)
    q = wide[:, :32]
    out = torch.full((meta.num_tokens, 40, 128), math.nan, dtype=torch.bfloat16, device="cuda")
    qk_scale = 128 ** -0.5 * attention_tiles._LOG2E * k_scale
    ref = paged_attention_ref(q, cache, meta, 128 ** -0.5, None, k_scale, v_scale)
    for keys_m in (False, True):
        out.fill_(math.nan)
        decode_gluon.decode_fp8(q, cache, meta, out[:, 4:36], qk_scale, v_scale, keys_m=keys_m)
        assert rel_err(out[:, 4:36], ref) < TOL[torch.bfloat16], keys_m
        assert out[:, :4].isnan().all() and out[:, 36:].isnan().all()


@pytest.mark.parametrize("dtype,group,block_size,window", [c[:3] + (100 if c[3] else None,) for c in ATTN_CASES])
def test_mixed_prefill_decode_attention_fp8(dtype, group, block_size, window, gen, poison_allocations):
    seqs = [(0, 300), (517, 64), (1000, 1), (0, 1), (40, 0), (129, 250), (2000, 1)]
    check_attention(seqs, 4 * group, 4, 128, block_size, dtype, gen, window)


@pytest.mark.parametrize("head_dim", [64, 256])
def test_attention_fp8_other_head_dims(head_dim, gen, poison_allocations, fused_reduce):
    check_attention([(0, 200), (300, 1)], 16, 4, head_dim, 16, torch.bfloat16, gen)
    check_attention([(300, 1), (1000, 1)], 16, 4, head_dim, 16, torch.bfloat16, gen)


def test_llama3_8b_prefill_2048_fp8(gen, poison_allocations):
    check_attention([(0, 2048)], 32, 8, 128, 16, torch.bfloat16, gen)


def fresh_codes(cache, meta):
    """The codes rotary_and_write_kv puts beside an fp8 cache for fresh prompts: every new
    token's keys and values, as float16 [T, Hk, D]."""
    slots = meta.slot_mapping.long()
    return (cache[0].flatten(0, 1)[slots].to(torch.float16),
            cache[1].flatten(0, 1)[slots].to(torch.float16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group,head_dim", [(4, 128), (1, 128), (4, 64)])
def test_fresh_prompts_fp8_read_the_codes(dtype, group, head_dim, gen, poison_allocations,
                                          monkeypatch):
    """Fresh prompts over an fp8 cache take the kernel that reads the step's own codes (float16
    beside the cache); the output matches the paged kernel on the cache and the reference, alone,
    after decodes and a chunk over cached context, and at the 1000 x 128 run's step shape."""
    fresh_calls = []
    real = attention.fresh_prefill_attention
    monkeypatch.setattr(attention, "fresh_prefill_attention",
                        lambda *a, **k: fresh_calls.append(1) or real(*a, **k))
    k_scale, v_scale = 0.013, 0.21
    for seqs in ([(0, 2048)], [(0, 300), (0, 1), (0, 517), (0, 64)],
                 [(1000, 1), (3, 1), (517, 64), (0, 300), (0, 129)], [(0, 128)] * 256):
        cache, meta = fp8_paged_case(seqs, 8, head_dim, 16, gen, k_scale, v_scale)
        q = randn(meta.num_tokens, 8 * group, head_dim, gen=gen, dtype=dtype, scale=0.1)
        assert attention.wants_fresh_kv(q, cache, meta)
        calls = len(fresh_calls)
        scale = head_dim ** -0.5
        out = paged_attention(q, cache, meta, scale, None, k_scale, v_scale,
                              fresh_kv=fresh_codes(cache, meta))
        assert len(fresh_calls) == calls + 1
        assert not out.isnan().any(), "an output element was not written"
        paged = paged_attention(q, cache, meta, scale, None, k_scale, v_scale)
        ref = paged_attention_ref(q, cache, meta, scale, None, k_scale, v_scale)
        for other, name in ((paged, "paged kernel"), (ref, "reference")):
            err = rel_err(out, other)
            assert err < TOL[dtype], f"{seqs[:3]}: relative error {err:.2e} against the {name}"
    monkeypatch.setenv("KILN_FRESH_FP8", "0")
    assert not attention.wants_fresh_kv(q, cache, meta)


def test_fresh_prompt_fp8_one_key_is_exact(gen):
    # A one-token prompt: its single key has softmax weight 1, so the fresh kernel's output is
    # v8 * v_scale bit for bit, as the paged kernels give it.
    v_scale = 0.0371
    cache, meta = fp8_paged_case([(0, 1)] * 3 + [(0, 5)], 2, 128, 16, gen, 0.5, v_scale)
    q = randn(meta.num_tokens, 8, 128, gen=gen, dtype=torch.bfloat16)
    out = paged_attention(q, cache, meta, 128 ** -0.5, None, 0.5, v_scale,
                          fresh_kv=fresh_codes(cache, meta))
    paged = paged_attention(q, cache, meta, 128 ** -0.5, None, 0.5, v_scale)
    want = dequantize_kv_ref(cache[1].flatten(0, 1)[meta.slot_mapping.long()[:3]], v_scale)
    assert torch.equal(out[:3], want.to(torch.bfloat16)[:, :, None, :].expand(3, 2, 4, 128)
                       .reshape(3, 8, 128))
    assert torch.equal(out[:3], paged[:3])


def test_rotary_codes_beside_the_fp8_cache(gen):
    """k_out / v_out (float16) receive every token's codes: where a slot is written, the very
    bytes the kernel put in the cache."""
    num_tokens, num_kv_heads, head_dim, max_pos = 300, 8, 128, 8192
    qkv = randn(num_tokens, (32 + 2 * num_kv_heads) * head_dim, gen=gen, dtype=torch.bfloat16,
                scale=3.0)
    q, k, v = qkv.split([32 * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q, k, v = (t.view(num_tokens, -1, head_dim) for t in (q, k, v))
    positions = torch.randint(0, max_pos, (num_tokens,), generator=gen, device="cuda")
    slots = torch.randperm(40 * 16, generator=gen, device="cuda")[:num_tokens]
    slots[::7] = -1
    cache = torch.empty(2, 40, 16, num_kv_heads, head_dim, dtype=FP8_KV_DTYPE, device="cuda")
    k_out = torch.full(k.shape, math.nan, dtype=torch.float16, device="cuda")
    v_out = torch.full(v.shape, math.nan, dtype=torch.float16, device="cuda")
    rotary_and_write_kv(q, k, v, positions, cos_sin_cache(max_pos, head_dim), cache, slots,
                        0.0173, 0.031, k_out, v_out)
    assert not k_out.isnan().any() and not v_out.isnan().any()
    keep = slots >= 0
    flat = cache.view(torch.uint8).view(2, -1, num_kv_heads, head_dim)
    for which, codes in enumerate((k_out, v_out)):
        assert torch.equal(codes[keep].to(FP8_KV_DTYPE).view(torch.uint8), flat[which, slots[keep]])
    assert torch.equal(v_out, quantize_kv_ref(v, 0.031).to(torch.float16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_is_exact_with_one_key(dtype, gen):
    # One visible key has softmax weight exactly 1: the output must be v8 * v_scale bit for bit.
    v_scale = 0.0371
    codes = torch.arange(256, device="cuda", dtype=torch.int32).to(torch.uint8).view(FP8_KV_DTYPE)
    codes = codes[~codes.float().isnan()]
    for seqs in ([(0, 1)] * 4, [(0, 1), (0, 7)]):  # decode path, then prefill path
        cache, meta = fp8_paged_case(seqs, 2, 128, 16, gen, 0.5, v_scale)
        picked = codes[torch.randint(0, codes.numel(), (len(seqs), 2, 128), generator=gen,
                                     device="cuda")]
        for i, block in enumerate(meta.block_tables[:, 0].tolist()):
            cache[1, block, 0] = picked[i]
        q = randn(meta.num_tokens, 8, 128, gen=gen, dtype=dtype)
        out = paged_attention(q, cache, meta, 128 ** -0.5, None, 0.5, v_scale)
        first = meta.query_start_loc[:-1].long()
        got = out[first].view(len(seqs), 2, 4, 128)
        want = dequantize_kv_ref(picked, v_scale).to(dtype)[:, :, None, :].expand_as(got)
        assert torch.equal(got, want)


def test_decode_fp8_replays_in_cuda_graph(gen):
    """Scales are plain floats baked into the capture; lengths and tables change on the device."""
    block_size, num_kv_heads, head_dim, batch, max_len = 16, 8, 128, 8, 2048
    k_scale, v_scale = 0.02, 0.05
    max_blocks = max_len // block_size
    num_blocks = batch * max_blocks
    tables = [list(range(b * max_blocks, (b + 1) * max_blocks)) for b in range(batch)]
    cache, _ = fp8_paged_case([(0, num_blocks * block_size)], num_kv_heads, head_dim, block_size,
                              gen, k_scale, v_scale, spare_blocks=0)
    meta = build_attention_metadata([(max_len - 1, 1, t) for t in tables], block_size, device="cuda")
    q = randn(batch, 32, head_dim, gen=gen, dtype=torch.bfloat16)
    scale = head_dim ** -0.5
    paged_attention(q, cache, meta, scale, None, k_scale, v_scale)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_attention(q, cache, meta, scale, None, k_scale, v_scale)
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
        ref = paged_attention_ref(q, cache, step, scale, None, k_scale, v_scale)
        assert rel_err(out, ref) < TOL[torch.bfloat16]


# ------------------------------------------------------------------------------------ tiny model
def _run_tiny_model(model, prompt: list[int], steps: int, forced: list[int] | None = None,
                    block_size: int = 16) -> tuple[torch.Tensor, list[int]]:
    """Prefill then decode over fp8 caches on CUDA, greedily or feeding ``forced`` tokens.

    Returns the logits of every step [steps, V] and the tokens fed after the prompt.
    """
    args = model.args
    num_blocks = -(-(len(prompt) + steps) // block_size)
    caches = [torch.zeros(2, num_blocks, block_size, args.num_key_value_heads, args.head_dim,
                          dtype=FP8_KV_DTYPE, device="cuda") for _ in range(args.num_hidden_layers)]
    table = list(range(num_blocks))
    rows, fed, start, new = [], [], 0, list(prompt)
    with torch.inference_mode():
        for i in range(steps):
            meta = build_attention_metadata([(start, len(new), table)], block_size, device="cuda")
            ids = torch.tensor(new, device="cuda")
            pos = torch.arange(start, start + len(new), device="cuda")
            logits = model.compute_logits(model(ids, pos, caches, meta)[-1:])
            rows.append(logits[0].float())
            start += len(new)
            new = [forced[i] if forced is not None else int(logits[0].argmax())]
            fed.append(new[0])
    return torch.stack(rows), fed


def test_tiny_model_fp8_cache_triton_matches_reference(tmp_path, monkeypatch):
    from kiln.models.loader import load_model
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama", tmp_path, seed=4, dtype="bfloat16")
    model = load_model(tmp_path, dtype="bfloat16", device="cuda")
    model.set_kv_cache_scales([(0.01 * (i + 1), 0.02) for i in range(len(model.layers))])
    prompt = list(range(20, 90))
    triton_logits, tokens = _run_tiny_model(model, prompt, 12)
    monkeypatch.setenv("KILN_KERNELS", "reference")
    # The reference decodes the Triton run's tokens, so both see the same contexts.
    ref_logits, _ = _run_tiny_model(model, prompt, 12, forced=tokens)
    assert rel_err(triton_logits, ref_logits) < 3e-2
