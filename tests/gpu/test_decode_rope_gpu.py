"""RoPE and the step's K/V write inside the decode attention kernel (KILN_ATTN_ROPE=1) on CUDA:
at the 8B shapes, under programmatic dependent launch and in CUDA graphs, the same cache bytes
and output bits as kiln.kernels.rotary's launch followed by the decode kernel; an engine decodes
the same greedy tokens with it, nothing compiled after start-up."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels.attention import decode_rope_possible, paged_attention  # noqa: E402
from kiln.kernels.attention_ref import FP8_KV_DTYPE  # noqa: E402
from kiln.kernels.decode_attention import DecodeRope  # noqa: E402
from kiln.kernels.rotary import rotary_and_write_kv  # noqa: E402
from kiln.layers.rotary import RopeConfig, build_cos_sin_cache  # noqa: E402
from gpu_helpers import eager_then_graph  # noqa: E402
from test_kernels_gpu import paged_case  # noqa: E402


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,graph_len", [(1, 8192), (4, 8192), (16, 8192), (1, 0), (16, 0)])
def test_decode_rope_bits_under_pdl_and_graphs(rows, graph_len, dtype, fp8, monkeypatch):
    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    gen = torch.Generator(device="cuda").manual_seed(rows + 100 * fp8)
    contexts = torch.randint(30, 3000, (rows,), generator=gen, device="cuda").tolist()
    kv_cache, meta = paged_case([(c, 1) for c in contexts], 8, 128, 16, dtype, gen)
    if fp8:
        kv_cache = (kv_cache.float() / 2).to(FP8_KV_DTYPE)
    if graph_len:
        meta = dataclasses.replace(meta, max_seq_len=graph_len)
    scales = (0.5, 0.25) if fp8 else (1.0, 1.0)
    qkv = torch.randn(rows, 6144, device="cuda").to(dtype)
    q, k, v = qkv.split((4096, 1024, 1024), dim=-1)
    q, k, v = q.view(rows, 32, 128), k.view(rows, 8, 128), v.view(rows, 8, 128)
    positions = torch.tensor(contexts, device="cuda")
    cos_sin = build_cos_sin_cache(128, 8192, RopeConfig(theta=500000.0), "cuda")
    want_cache = kv_cache.clone()
    q_rot = rotary_and_write_kv(q, k, v, positions, cos_sin, want_cache, meta.slot_mapping,
                                *scales)
    want = paged_attention(q_rot, want_cache, meta, 128 ** -0.5, None, *scales)
    assert decode_rope_possible(q, k, v, kv_cache, meta, cos_sin)
    rope = DecodeRope(positions, meta.slot_mapping, cos_sin, k, v, *scales)
    cache = kv_cache.clone()

    def run():
        cache.copy_(kv_cache)
        return paged_attention(q, cache, meta, 128 ** -0.5, None, *scales, rope=rope)

    def check(out):
        assert torch.equal(cache.view(torch.uint8), want_cache.view(torch.uint8))
        assert torch.equal(out, want)

    eager_then_graph(run, check, 10, 30)


def test_engine_greedy_tokens_with_and_without_rope_in_decode(tmp_path, monkeypatch):
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "m", seed=5, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(5 + i, 50 + 3 * i))} for i in range(5)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_ATTN_ROPE", flag)
        # a fixed KV cache: sized from free memory it can come out empty beside other test workers
        llm = LLM(str(tmp_path / "m"), device="cuda", num_kv_blocks=512, max_num_seqs=8)
        outs = llm.generate(prompts, params)
        runs[flag] = [(o.outputs[0].token_ids,
                       [sorted((t, lp.logprob) for t, lp in d.items())
                        for d in o.outputs[0].logprobs]) for o in outs]
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        del llm
        torch.cuda.empty_cache()
    assert runs["1"] == runs["0"]
