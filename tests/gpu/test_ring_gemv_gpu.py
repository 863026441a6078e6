"""The batch-1 ring GEMV (kiln.kernels.ring_gemv, Gluon) against its torch reference, its
deterministic shared-tile reduction, its use under CUDA graphs with PDL, and an engine's greedy
tokens with and without it (KILN_RING_GEMV)."""

import pytest
import torch

from gpu_helpers import assert_top5_agree, eager_then_graph, randn, rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="needs an sm_90 GPU")

# (N, K): 8B layers (qkv, o, gate_up, down, LM head), odd tile counts, the K128 configuration
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096),
          (32, 256), (96, 512), (512, 256), (192, 384), (64, 128), (1000 * 32, 1280)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", SHAPES)
def test_ring_gemv_matches_reference(n, k, dtype):
    from kiln.kernels.ring_gemv import ring_config, ring_gemv, ring_gemv_ok, ring_gemv_ref

    gen = torch.Generator(device="cuda").manual_seed(n * 7 + k)
    x = randn(1, k, gen=gen, dtype=dtype)
    w = randn(n, k, gen=gen, dtype=dtype, scale=k ** -0.5)
    assert ring_config(n, k) is not None and ring_gemv_ok(x, w)
    ref = ring_gemv_ref(x, w, None)
    exact = x.double() @ w.double().t()
    out = ring_gemv(x, w)
    assert out.shape == (1, n) and out.dtype == dtype
    # float32 sums in another order than the reference's: within a rounding of the output
    assert rel_err(out, exact) < 4e-3
    assert (out.float() - ref.float()).abs().max() <= 2 * ref.float().abs().max() * 2 ** -7
    again = ring_gemv(x, w)  # counters re-armed, partials added in program order: same bits
    assert torch.equal(again, out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ring_gemv_bias_and_out(dtype):
    from kiln.kernels.ring_gemv import ring_gemv, ring_gemv_ref

    gen = torch.Generator(device="cuda").manual_seed(3)
    x = randn(1, 1024, gen=gen, dtype=dtype)
    w = randn(3072, 1024, gen=gen, dtype=dtype, scale=1024 ** -0.5)
    bias = randn(3072, gen=gen, dtype=dtype)
    out = torch.full((1, 3072), float("nan"), dtype=dtype, device="cuda")
    got = ring_gemv(x, w, bias, out=out)
    assert got.data_ptr() == out.data_ptr()
    ref = ring_gemv_ref(x, w, bias)
    assert rel_err(out, ref) < 4e-3
    assert not torch.isnan(out).any()


def test_ring_gemv_refuses_what_it_does_not_take():
    from kiln.kernels.ring_gemv import ring_gemv, ring_gemv_ok

    w = torch.zeros(64, 256, dtype=torch.bfloat16, device="cuda")
    assert not ring_gemv_ok(torch.zeros(2, 256, dtype=torch.bfloat16, device="cuda"), w)
    assert not ring_gemv_ok(torch.zeros(1, 256, dtype=torch.float16, device="cuda"), w)
    assert not ring_gemv_ok(torch.zeros(1, 96, dtype=torch.bfloat16, device="cuda"),
                            torch.zeros(64, 96, dtype=torch.bfloat16, device="cuda"))
    assert not ring_gemv_ok(torch.zeros(1, 256, dtype=torch.bfloat16),
                            torch.zeros(64, 256, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="ring_gemv takes one"):
        ring_gemv(torch.zeros(2, 256, dtype=torch.bfloat16, device="cuda"), w)


def test_ring_gemv_chain_in_a_graph_with_pdl():
    """Three dependent products (the output of one is the input of the next), eager and then
    replayed from a CUDA graph captured with PDL, against the reference chain each time."""
    from kiln.kernels.ring_gemv import ring_gemv, ring_gemv_ref

    gen = torch.Generator(device="cuda").manual_seed(11)
    dims = [(6144, 4096), (4096, 6144), (14336, 4096), (4096, 14336)]
    ws = [randn(n, k, gen=gen, dtype=torch.bfloat16, scale=k ** -0.5) for n, k in dims]
    x = randn(1, 4096, gen=gen, dtype=torch.bfloat16)

    def run():
        h = x
        for w in ws:
            h = ring_gemv(h, w)
        return h

    want = x
    for w in ws:
        want = ring_gemv_ref(want, w, None)

    def check(out):
        assert rel_err(out, want) < 2e-2

    eager_then_graph(run, check, 3, 10)


def test_engine_greedy_tokens_with_and_without_the_ring_gemv(tmp_path, monkeypatch):
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama-d128", tmp_path / "m", seed=5, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(5 + i, 50 + 3 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    runs, calls = {}, {}
    import kiln.kernels.ring_gemv as rg
    real = rg._ring_gemv_kernel.run

    def counting(*args, **kwargs):
        calls[flag] = calls.get(flag, 0) + 1
        return real(*args, **kwargs)
    monkeypatch.setattr(rg._ring_gemv_kernel, "run", counting)
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_RING_GEMV", flag)
        llm = LLM(str(tmp_path / "m"), device="cuda", num_kv_blocks=256, max_num_seqs=1)
        runs[flag] = llm.generate(prompts, params)  # batch 1: one sequence a step
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        del llm
        torch.cuda.empty_cache()
    assert calls.get("0", 0) == 0 and calls.get("1", 0) > 0
    assert_top5_agree([o.outputs[0] for o in runs["1"]], [o.outputs[0] for o in runs["0"]])
