"""RoPE and the step's K/V write inside the decode attention kernel (KILN_ATTN_ROPE, DecodeRope)
under the interpreter: the same cache bytes and the same attention output bits as
kiln.kernels.rotary's launch followed by the decode kernel, for one and many partitions, merged
in the kernel or by the reduce kernel, with a window, padding rows that write nothing, and an fp8
cache; an engine decodes the same tokens and log-probs with it."""

import dataclasses

import pytest
import torch

from kernel_cases import greedy_tokens, paged_case
from kiln.kernels import decode_attention
from kiln.kernels.attention import decode_rope_possible, paged_attention
from kiln.kernels.attention_ref import FP8_KV_DTYPE
from kiln.kernels.decode_attention import DecodeRope
from kiln.kernels.rotary import rotary_and_write_kv
from kiln.layers.rotary import RopeConfig, build_cos_sin_cache


def _step(contexts, heads, kv_heads, head_dim, dtype, gen, fp8=False):
    """A decode step's cache, metadata, positions and q/k/v (views of one fused qkv row, as the
    attention layer splits them)."""
    kv_cache, meta = paged_case([(c, 1) for c in contexts], kv_heads, head_dim, 16, dtype, gen)
    if fp8:
        kv_cache = (kv_cache.float() / 4).to(FP8_KV_DTYPE)
    t = len(contexts)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    q, k, v = qkv.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    q = q.reshape(t, heads, head_dim)
    k = k.reshape(t, kv_heads, head_dim)
    v = v.reshape(t, kv_heads, head_dim)
    positions = torch.tensor(contexts)
    return kv_cache, meta, positions, q, k, v


@pytest.mark.parametrize("contexts,fused,window", [
    ([10, 7, 14, 0], "1", None),     # one partition per sequence (contexts within one tile)
    ([40, 7, 130, 0], "1", None),    # split, merged in the partition kernel
    ([40, 7, 130, 0], "0", None),    # split, merged by the reduce kernel
    ([40, 7, 130, 0], "1", 40),      # split under a sliding window
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_decode_rope_gives_the_rotary_launch_bits(contexts, fused, window, dtype, gen,
                                                  monkeypatch):
    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    monkeypatch.setenv("KILN_ATTN_FUSED_REDUCE", fused)
    kv_cache, meta, positions, q, k, v = _step(contexts, 8, 2, 32, dtype, gen)
    # the last row is padding, as a decode graph pads its batch: no slot, nothing written
    meta = dataclasses.replace(meta, slot_mapping=meta.slot_mapping.clone())
    meta.slot_mapping[-1] = -1
    cos_sin = build_cos_sin_cache(32, 512, RopeConfig(), "cpu")
    want_cache = kv_cache.clone()
    q_rot = rotary_and_write_kv(q, k, v, positions, cos_sin, want_cache, meta.slot_mapping)
    want = paged_attention(q_rot, want_cache, meta, 32 ** -0.5, window)
    assert decode_rope_possible(q, k, v, kv_cache, meta, cos_sin)
    got_cache = kv_cache.clone()
    got = paged_attention(q, got_cache, meta, 32 ** -0.5, window,
                          rope=DecodeRope(positions, meta.slot_mapping, cos_sin, k, v))
    assert torch.equal(got_cache, want_cache)
    assert not torch.equal(got_cache, kv_cache)  # the step's keys and values were written
    assert torch.equal(got, want)


def test_decode_rope_over_an_fp8_cache(gen, monkeypatch):
    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    kv_cache, meta, positions, q, k, v = _step([90, 33], 8, 2, 32, torch.float16, gen, fp8=True)
    cos_sin = build_cos_sin_cache(32, 512, RopeConfig(), "cpu")
    want_cache = kv_cache.clone()
    q_rot = rotary_and_write_kv(q, k, v, positions, cos_sin, want_cache, meta.slot_mapping,
                                0.5, 0.25)
    want = paged_attention(q_rot, want_cache, meta, 32 ** -0.5, None, 0.5, 0.25)
    got_cache = kv_cache.clone()
    got = paged_attention(q, got_cache, meta, 32 ** -0.5, None, 0.5, 0.25,
                          rope=DecodeRope(positions, meta.slot_mapping, cos_sin, k, v, 0.5, 0.25))
    assert torch.equal(got_cache.view(torch.uint8), want_cache.view(torch.uint8))
    assert torch.equal(got, want)


def test_decode_rope_refuses_what_it_cannot_do(gen, monkeypatch):
    kv_cache, meta, positions, q, k, v = _step([20, 9], 8, 2, 32, torch.float16, gen)
    cos_sin = build_cos_sin_cache(32, 512, RopeConfig(), "cpu")
    rope = DecodeRope(positions, meta.slot_mapping, cos_sin, k, v)
    # a large batch (the large tile, maybe the Gluon kernels) keeps the rotary launch
    monkeypatch.setattr(decode_attention, "large_decode_min_seqs", lambda kv, sms: 2)
    assert not decode_rope_possible(q, k, v, kv_cache, meta, cos_sin)
    with pytest.raises(ValueError, match="RoPE"):
        paged_attention(q, kv_cache, meta, 0.2, rope=rope)
    monkeypatch.undo()
    # a prompt of several tokens
    kv_cache, meta, positions, q, k, v = _step([20], 8, 2, 32, torch.float16, gen)
    _, prompt_meta = paged_case([(0, 3)], 2, 32, 16, torch.float16, gen)
    q3 = torch.randn(3, 8, 32, generator=gen).to(torch.float16)
    assert not decode_rope_possible(q3, k, v, kv_cache, prompt_meta, cos_sin)


def test_engine_tokens_with_and_without_rope_in_decode(tmp_path, monkeypatch):
    """Greedy tokens and their log-probs, bit for bit, with the decode steps' RoPE in the
    attention kernel (split contexts, as on a GPU) and without."""
    from kiln.kernels import rotary
    from kiln.models.random_model import write_random_model

    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    write_random_model("tiny-llama", tmp_path, seed=6, dtype="float16")
    launches = []
    real = rotary._launch

    def counting(q, *args, **kwargs):
        launches.append(q.shape[0])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(rotary, "_launch", counting)
    runs = {}
    for rope in ("0", "1"):
        monkeypatch.setenv("KILN_ATTN_ROPE", rope)
        launches.clear()
        runs[rope], _ = greedy_tokens(tmp_path, (60, 11), 5)
        decode_rotations = sum(1 for t in launches if t <= 2)
        assert (decode_rotations == 0) == (rope == "1")
    assert runs["0"] == runs["1"]
