"""Triton paged attention (decode and general paths) against the torch reference (interpreter, CPU)."""

import pytest
import torch

from kernel_cases import TOL, paged_case, rel_err
from kiln.kernels import attention, decode_attention
from kiln.kernels.attention import paged_attention
from kiln.kernels.attention_ref import paged_attention_ref


def run_case(seqs, num_q_heads, num_kv_heads, head_dim, block_size, dtype, gen, window=None):
    kv_cache, meta = paged_case(seqs, num_kv_heads, head_dim, block_size, dtype, gen)
    q = torch.randn(meta.num_tokens, num_q_heads, head_dim, generator=gen).to(dtype)
    scale = head_dim ** -0.5
    out = paged_attention(q, kv_cache, meta, scale, window)
    ref = paged_attention_ref(q, kv_cache, meta, scale, window)
    assert out.shape == ref.shape and out.dtype == dtype
    assert not out.isnan().any(), "some output element was not written"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_single_partition(dtype, group, block_size, gen, poison_allocations):
    # Context lengths straddle block boundaries; one sequence has a single token of context.
    seqs = [(0, 1), (16, 1), (40, 1), (block_size * 3 + 4, 1)]
    run_case(seqs, 2 * group, 2, 32, block_size, dtype, gen)


@pytest.mark.parametrize("override", [None, "32,2,5"])
@pytest.mark.parametrize("sms, large", [(64, False), (1, True)])
def test_decode_tile_follows_the_batch(sms, large, override, gen, poison_allocations, monkeypatch):
    # A batch whose (sequence, kv head) programs give two per SM takes 64-key tiles on two warps
    # (LARGE_DECODE_TILE); a smaller one SMALL_DECODE_TILE; KILN_ATTN_LARGE_TILE /
    # KILN_ATTN_SMALL_TILE replace the one they name. All agree with the reference over
    # contexts that end inside, at and past a 64-key tile.
    from triton.runtime import interpreter

    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: sms)
    if override:
        monkeypatch.setenv("KILN_ATTN_LARGE_TILE" if large else "KILN_ATTN_SMALL_TILE", override)
    seen = []
    real = interpreter.InterpretedFunction.run

    def recording(self, *args, **kwargs):
        if self.fn.__name__ == "_decode_partition_kernel":
            seen.append((kwargs["BLOCK_N"], kwargs.get("num_warps"), kwargs.get("num_stages")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording)
    seqs = [(63, 1), (64, 1), (150, 1), (0, 1), (191, 1), (128, 1)]
    assert (len(seqs) >= decode_attention.large_decode_min_seqs(2, sms)) == large
    run_case(seqs, 8, 2, 32, 16, torch.float16, gen)
    t = decode_attention.LARGE_DECODE_TILE if large else decode_attention.SMALL_DECODE_TILE
    want = (t["block_n"], t["num_warps"], t["num_stages"])
    assert seen == [tuple(int(v) for v in override.split(",")) if override else want]


def test_decode_tile_override_must_name_three_numbers(monkeypatch):
    monkeypatch.setenv("KILN_ATTN_LARGE_TILE", "64,2")
    with pytest.raises(ValueError, match="KILN_ATTN_LARGE_TILE='64,2': expected"):
        decode_attention.decode_tile(True)
    assert decode_attention.decode_tile(False) == decode_attention.SMALL_DECODE_TILE


def record_grids(monkeypatch, module, name) -> list:
    """Replace module's kernel `name` with one that records each launch's grid, then launches."""
    grids, real = [], getattr(module, name)

    class Recording:
        def __getitem__(self, grid):
            grids.append(grid)
            return real[grid]

    monkeypatch.setattr(module, name, Recording())
    return grids


def counters_rearmed():
    from kiln.kernels import qmm_common

    locks = qmm_common.split_locks(torch.device("cpu"))
    assert not bool(locks.any()), "an arrival counter was left armed"


def test_large_decode_batch_over_fp8_cache_quantizes_its_output(gen, poison_allocations,
                                                                 monkeypatch):
    # Over an fp8 cache, a decode batch with one partition per sequence (70 sequences, 140
    # programs on 64 SMs) quantizes its rows in the kernel too: the last kv head of each
    # sequence to finish does the row. Bits of quant_per_token on the plain output, no separate
    # launch, every counter re-armed.
    from kiln.kernels import quant_act

    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    seqs = [(20 + 3 * i, 1) for i in range(70)]
    kv_cache, meta = paged_case(seqs, 2, 32, 16, torch.float16, gen)
    cache8 = kv_cache.to(torch.float8_e4m3fn)
    q = torch.randn(meta.num_tokens, 8, 32, generator=gen).to(torch.bfloat16)
    plain = paged_attention(q, cache8, meta, 32 ** -0.5, None, 0.5, 0.25)
    want_q, want_s = quant_act.quant_per_token(plain.reshape(meta.num_tokens, -1),
                                               torch.float8_e4m3fn)
    launches = record_grids(monkeypatch, quant_act, "_quant_per_token_kernel")
    rows = paged_attention(q, cache8, meta, 32 ** -0.5, None, 0.5, 0.25,
                           quant_dtype=torch.float8_e4m3fn)
    assert rows.m == 70 and rows.q.shape[0] == 80  # padded to a multiple of 16 rows
    assert torch.equal(rows.q[:70].view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(rows.scale[:70], want_s)
    assert launches == []
    counters_rearmed()


@pytest.mark.parametrize("fused", ["0", "1"])
@pytest.mark.parametrize("window", [None, 70])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_split_partitions(window, group, fused, gen, poison_allocations, monkeypatch):
    # Pretend to be a large chip so the decode path splits contexts into 128-key partitions and
    # merges them: with the reduce kernel, or (fused) in the partition kernel's last program of
    # each sequence and kv head (contexts of up to 3 partitions, one inside its first partition).
    monkeypatch.setenv("KILN_ATTN_FUSED_REDUCE", fused)
    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    seqs = [(300, 1), (37, 1), (129, 1), (255, 1)]
    run_case(seqs, 2 * group, 2, 16, 16, torch.float32, gen, window)
    counters_rearmed()


@pytest.mark.parametrize("fused", ["0", "1"])
@pytest.mark.parametrize("window", [None, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_partitions_follow_each_context(window, dtype, fused, gen, poison_allocations,
                                               monkeypatch):
    # A decode graph fixes max_seq_len to max_model_len, so the launch grid has as many partitions
    # as a long context could use; each sequence cuts its own keys into that many runs of whole
    # tiles. Short and ragged contexts (one key, one tile, a partial tile, many tiles), with and
    # without a window, agree with the reference, and the reduce (or, fused, the partition
    # kernel's last program per sequence and kv head) merges them.
    import dataclasses

    monkeypatch.setenv("KILN_ATTN_FUSED_REDUCE", fused)
    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    launched = record_grids(monkeypatch, decode_attention, "_decode_reduce_kernel")
    seqs = [(0, 1), (16, 1), (39, 1), (128, 1), (300, 1)]
    kv_cache, meta = paged_case(seqs, 2, 32, 16, dtype, gen)
    meta = dataclasses.replace(meta, max_seq_len=4096)
    q = torch.randn(meta.num_tokens, 8, 32, generator=gen).to(dtype)
    out = paged_attention(q, kv_cache, meta, 32 ** -0.5, window)
    ref = paged_attention_ref(q, kv_cache, meta, 32 ** -0.5, window)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]
    assert launched == ([] if fused == "1" else [(len(seqs), 8)])
    counters_rearmed()
    # Two programs per SM: 128 over 5 sequences x 2 kv heads.
    assert decode_attention._decode_partitions(len(seqs), 2, 4096, 64, 16) == 13


@pytest.mark.parametrize("fused", ["0", "1"])
def test_decode_skips_sequences_without_new_tokens(fused, gen, poison_allocations, monkeypatch):
    # A sequence with no new token (padding of a fixed-size decode batch) writes nothing and
    # must not disturb its neighbours, on both the direct and the split path (its programs
    # arrive at no counter when the split path merges in the partition kernel).
    monkeypatch.setenv("KILN_ATTN_FUSED_REDUCE", fused)
    for sms in (1, 64):
        monkeypatch.setattr(decode_attention, "_num_sms", lambda device, sms=sms: sms)
        run_case([(50, 1), (200, 0), (7, 1)], 4, 2, 16, 16, torch.float32, gen)
    counters_rearmed()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
def test_mixed_prefill_and_decode(dtype, group, block_size, gen, poison_allocations):
    # A fresh prompt, a chunk on top of cached context, decodes, and a sequence with no new tokens.
    seqs = [(0, 37), (20, 5), (50, 1), (0, 1), (33, 0), (70, 19)]
    run_case(seqs, 2 * group, 2, 32, block_size, dtype, gen)


@pytest.mark.parametrize("window", [None, 30])
def test_mixed_batch_with_leading_decodes(window, gen, poison_allocations, monkeypatch):
    # Running decodes first (one with no new token), then prompts and chunks: the decode rows go
    # to the decode kernel (also split into partitions), the rest to the tiled kernel.
    seqs = [(50, 1), (200, 0), (7, 1), (300, 1), (0, 37), (20, 5), (70, 1), (64, 19)]
    calls = []
    for name in ("_paged_decode", "_paged_prefill"):
        real = getattr(attention, name)
        monkeypatch.setattr(attention, name, lambda q, c, meta, *a, real=real, name=name, **k:
                            calls.append((name, meta.num_seqs)) or real(q, c, meta, *a, **k))
    for sms in (1, 64):
        monkeypatch.setattr(decode_attention, "_num_sms", lambda device, sms=sms: sms)
        run_case(seqs, 8, 2, 32, 16, torch.float32, gen, window)
    assert calls[:2] == [("_paged_decode", 4), ("_paged_prefill", 4)]


@pytest.mark.parametrize("window", [1, 8, 24, 100])
def test_prefill_sliding_window(window, gen, poison_allocations):
    seqs = [(0, 45), (30, 20), (90, 1)]
    run_case(seqs, 4, 1, 16, 16, torch.float32, gen, window)


def test_prefill_long_prompt_uses_unmasked_tiles(gen, poison_allocations):
    # Long enough that tiles below the diagonal take the mask-free path.
    run_case([(100, 140), (0, 130)], 2, 2, 16, 16, torch.float32, gen)
    run_case([(100, 140)], 2, 2, 16, 16, torch.float32, gen, window=96)


def test_head_dim_64_and_128(gen, poison_allocations):
    for head_dim in (64, 128):
        run_case([(0, 9), (20, 1)], 4, 2, head_dim, 16, torch.float16, gen)
        run_case([(20, 1), (3, 1)], 4, 2, head_dim, 16, torch.float16, gen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seqs", [[(300, 1), (37, 1), (129, 1), (0, 1)],
                                  [(50, 1), (200, 0), (7, 1)],
                                  [(40, 3), (90, 1)],
                                  [(20 + 3 * i, 1) for i in range(70)]])
def test_attention_output_quantized_for_o_proj(seqs, dtype, gen, poison_allocations, monkeypatch):
    # quant_dtype=fp8 (an fp8 o_proj reads the output): a decode batch whose kernel merges its
    # partitions quantizes the rows itself (no quantization launch); other batches (a prompt
    # chunk here, and over this 16-bit cache the 70 sequences: 140 programs on 64 SMs, one
    # partition each) through quantize_rows. Codes and scales are those of quant_per_token on
    # the plain output, bit for bit, and every counter is re-armed.
    from kiln.kernels import quant_act

    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    kv_cache, meta = paged_case(seqs, 2, 32, 16, dtype, gen)
    q = torch.randn(meta.num_tokens, 8, 32, generator=gen).to(dtype)
    plain = paged_attention(q, kv_cache, meta, 32 ** -0.5)
    # the separate launch's bits (the interpreter's own fp8 conversion on both sides: it can
    # round a value just under a power of two, such as 127.6, down a binade, unlike CUDA)
    want_q, want_s = quant_act.quant_per_token(plain.reshape(meta.num_tokens, -1),
                                               torch.float8_e4m3fn)
    launches = record_grids(monkeypatch, quant_act, "_quant_per_token_kernel")
    rows = paged_attention(q, kv_cache, meta, 32 ** -0.5, quant_dtype=torch.float8_e4m3fn)
    assert rows.m == meta.num_tokens and rows.shape == (meta.num_tokens, 8 * 32)
    assert rows.dtype == dtype
    assert torch.equal(rows.q[:rows.m].view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(rows.scale[:rows.m], want_s)
    fused = meta.max_query_len == 1 and meta.num_seqs < 64
    assert launches == ([] if fused else [(meta.num_tokens,)])
    counters_rearmed()
