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
    """KILN_RING_GEMV 0, 1 and fused (the norms and SiLU-mul in the GEMVs) at batch 1."""
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
        if kwargs.get("PROLOGUE"):
            calls[flag + " prologue"] = calls.get(flag + " prologue", 0) + 1
        return real(*args, **kwargs)
    monkeypatch.setattr(rg._ring_gemv_kernel, "run", counting)
    for flag in ("0", "1", "fused"):
        monkeypatch.setenv("KILN_RING_GEMV", flag)
        llm = LLM(str(tmp_path / "m"), device="cuda", num_kv_blocks=256, max_num_seqs=1)
        runs[flag] = llm.generate(prompts, params)  # batch 1: one sequence a step
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        del llm
        torch.cuda.empty_cache()
    assert calls.get("0", 0) == 0 and calls.get("1", 0) > 0 and "1 prologue" not in calls
    assert calls.get("fused prologue", 0) > 0
    for flag in ("1", "fused"):
        assert_top5_agree([o.outputs[0] for o in runs[flag]], [o.outputs[0] for o in runs["0"]],
                          flag)


def test_build_times_the_batch1_ring_path_and_the_engine_applies_its_choice(tmp_path, monkeypatch):
    """`kiln build --quant none` times the batch-1 decode step with and without the ring path
    and stores the faster; an engine whose stored choice is the ring captures its batch-1 graph
    on it (the ring kernel launched while capturing, nothing compiled after start-up) and
    generates the checkpoint's greedy tokens under the top-5 rule; the checkpoint does not."""
    import kiln.kernels as kk
    import kiln.kernels.ring_gemv as rg
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.engine_dir import read_engine_info, write_engine_info
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    monkeypatch.delenv("KILN_RING_GEMV", raising=False)
    monkeypatch.delenv("KILN_PDL_TRIGGER", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "src", seed=7, dtype="bfloat16")
    info = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"), QuantConfig("none"),
                                     eval_tokens=0, device="cuda", progress=False))
    ring = info["kernel_tuning"]["in_situ"][0]["batch1_ring"]
    assert ring["chosen"] in ("ring", "tc") and info["kernel_tuning"]["batch1_gemv"] == ring["chosen"]
    assert len(ring["ms_tc"]) == len(ring["ms_ring"]) == 3 and min(ring["ms_ring"]) > 0
    assert not kk.batch1_ring()  # a scope: nothing left on after the build
    stored = read_engine_info(tmp_path / "e")
    stored["kernel_tuning"]["batch1_gemv"] = "ring"
    write_engine_info(tmp_path / "e", stored)
    calls = []
    real = rg._ring_gemv_kernel.run

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(rg._ring_gemv_kernel, "run", counting)
    prompts = [{"prompt_token_ids": list(range(5 + i, 50 + 3 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    outs = {}
    for name, path in (("engine", tmp_path / "e"), ("checkpoint", tmp_path / "src")):
        count = len(calls)
        llm = LLM(str(path), device="cuda", num_kv_blocks=256, max_num_seqs=1)
        assert llm.engine.runner.graphs.batch1_ring == (name == "engine")
        outs[name] = [o.outputs[0] for o in llm.generate(prompts, params)]
        assert (len(calls) > count) == (name == "engine"), name  # launched by the capture
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        assert not kk.batch1_ring()
        del llm
        torch.cuda.empty_cache()
    assert_top5_agree(outs["engine"], outs["checkpoint"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(6144, 4096), (28672, 4096), (96, 256), (192, 384)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_ring_gemv_norm_is_the_norm_then_the_product(n, k, dtype, with_residual):
    from kiln.kernels.ring_gemv import ring_gemv_norm, ring_gemv_norm_ref

    gen = torch.Generator(device="cuda").manual_seed(n + k + with_residual)
    x = randn(1, k, gen=gen, dtype=dtype, scale=3.0)
    res = randn(1, k, gen=gen, dtype=dtype) if with_residual else None
    res_before = res.clone() if with_residual else None
    norm_w = randn(k, gen=gen, dtype=dtype, scale=0.5) + 1
    w = randn(n, k, gen=gen, dtype=dtype, scale=k ** -0.5)
    y, summed = ring_gemv_norm(x, norm_w, 1e-5, w, residual=res)
    want_y, want_sum = ring_gemv_norm_ref(x, norm_w, 1e-5, w, residual=res)
    assert rel_err(y, want_y) < 4e-3
    if with_residual:
        assert torch.equal(summed, want_sum)
        assert torch.equal(res, res_before)  # read by every program: never written
    else:
        assert summed is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(4096, 14336), (64, 256), (128, 384)])
def test_ring_gemv_silu_is_the_activation_then_the_product(n, k, dtype):
    from kiln.kernels.ring_gemv import ring_gemv_silu, ring_gemv_silu_ref

    gen = torch.Generator(device="cuda").manual_seed(n + k)
    gate_up = randn(1, 2 * k, gen=gen, dtype=dtype, scale=2.0)
    w = randn(n, k, gen=gen, dtype=dtype, scale=k ** -0.5)
    y = ring_gemv_silu(gate_up, w)
    assert rel_err(y, ring_gemv_silu_ref(gate_up, w)) < 4e-3


def test_ring_gemv_fused_layer_in_a_graph_with_pdl():
    """An 8B decoder layer's four products with the norms and SiLU-mul in the GEMVs (attention
    left out: o_proj reads q's part of qkv), eager and replayed from a graph captured with PDL."""
    from kiln.kernels.ring_gemv import (ring_gemv, ring_gemv_norm, ring_gemv_norm_ref,
                                        ring_gemv_ref, ring_gemv_silu, ring_gemv_silu_ref)

    gen = torch.Generator(device="cuda").manual_seed(5)
    bf = torch.bfloat16
    qkv_w = randn(6144, 4096, gen=gen, dtype=bf, scale=4096 ** -0.5)
    o_w = randn(4096, 4096, gen=gen, dtype=bf, scale=4096 ** -0.5)
    gu_w = randn(28672, 4096, gen=gen, dtype=bf, scale=4096 ** -0.5)
    down_w = randn(4096, 14336, gen=gen, dtype=bf, scale=14336 ** -0.5)
    n1, n2 = randn(4096, gen=gen, dtype=bf) + 1, randn(4096, gen=gen, dtype=bf) + 1
    x = randn(1, 4096, gen=gen, dtype=bf)
    res = randn(1, 4096, gen=gen, dtype=bf)

    def run():
        qkv, h = ring_gemv_norm(x, n1, 1e-5, qkv_w, residual=res)
        o = ring_gemv(qkv[:, :4096].contiguous(), o_w)
        gu, h2 = ring_gemv_norm(o, n2, 1e-5, gu_w, residual=h)
        return torch.cat([ring_gemv_silu(gu, down_w), h2], dim=1)

    qkv, h = ring_gemv_norm_ref(x, n1, 1e-5, qkv_w, residual=res)
    o = ring_gemv_ref(qkv[:, :4096], o_w, None)
    gu, h2 = ring_gemv_norm_ref(o, n2, 1e-5, gu_w, residual=h)
    want = torch.cat([ring_gemv_silu_ref(gu, down_w), h2], dim=1)

    def check(out):
        assert rel_err(out, want) < 2e-2

    eager_then_graph(run, check, 3, 10)
