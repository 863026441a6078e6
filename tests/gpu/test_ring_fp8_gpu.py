"""The batch-1 fp8 ring GEMV (kiln.kernels.ring_fp8, Gluon, e4m3 tensor-core products) against
the fp8 reference, its deterministic shared-tile reduction, its use under CUDA graphs with PDL,
and an fp8 engine's greedy tokens with and without it."""

import pytest
import torch

from gpu_helpers import assert_top5_agree, eager_then_graph, rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="needs an sm_90 GPU")

# (N, K): 8B layers (qkv, o, gate_up, down, LM head), units of 8 chunks (K 1024, 1536), one row
# block, odd tile counts
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096),
          (2048, 1024), (48, 1536), (16, 4096), (4112, 16384), (400, 6144)]


def case(n, k, seed):
    """Random e4m3 weights with per-row scales, and a row quantized per token."""
    from kiln.kernels.quant_act import quant_per_token

    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = (torch.randn(n, k, generator=gen, device="cuda") * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = (torch.rand(n, generator=gen, device="cuda") * 0.02 + 0.001) * (k / 4096) ** -0.5 / 64
    x = torch.randn(1, k, generator=gen, device="cuda").to(torch.bfloat16)
    xq, sx = quant_per_token(x, torch.float8_e4m3fn)
    return xq, sx.float(), w, ws.float()


@pytest.mark.parametrize("n,k", SHAPES)
def test_ring_fp8_matches_reference(n, k):
    from kiln.kernels.quant_ref import _fp8_product_ref
    from kiln.kernels.ring_fp8 import ring_fp8_gemv, ring_fp8_ok, ring_fp8_ref

    xq, sx, w, ws = case(n, k, n + k)
    assert ring_fp8_ok(xq[:1], sx, w, ws)
    ref = ring_fp8_ref(xq[:1], sx, w, ws)
    assert torch.allclose(ref.float(), _fp8_product_ref(xq[:1], sx[:1], w, ws).to(torch.bfloat16).float())
    exact = (xq[:1].double() @ w.double().t()) * sx.reshape(-1)[0].double() * ws.double()
    out = ring_fp8_gemv(xq[:1], sx, w, ws)
    assert out.shape == (1, n) and out.dtype == torch.bfloat16
    # exact products, float32 sums in the tensor cores' order and width: within a few roundings
    assert rel_err(out, exact) < 4e-3
    again = ring_fp8_gemv(xq[:1], sx, w, ws)  # counters re-armed, partials in program order
    assert torch.equal(again, out)


def test_ring_fp8_bias():
    from kiln.kernels.ring_fp8 import ring_fp8_gemv, ring_fp8_ref

    xq, sx, w, ws = case(3072, 4096, 1)
    bias = torch.randn(3072, device="cuda").to(torch.bfloat16)
    out = ring_fp8_gemv(xq[:1], sx, w, ws, bias)
    assert rel_err(out, ring_fp8_ref(xq[:1], sx, w, ws, bias)) < 4e-3


def test_ring_fp8_refuses_what_it_does_not_take():
    from kiln.kernels.ring_fp8 import ring_fp8_gemv, ring_fp8_ok

    xq, sx, w, ws = case(64, 4096, 2)
    assert ring_fp8_ok(xq[:1], sx, w, ws)
    assert not ring_fp8_ok(xq[:1].expand(2, -1).contiguous(), sx, w, ws)  # two rows
    assert not ring_fp8_ok(xq[:1].float().to(torch.bfloat16), sx, w, ws)
    assert not ring_fp8_ok(xq[:1], sx, w, ws.half())
    assert not ring_fp8_ok(xq[:1], sx, w.t().contiguous().t(), ws)  # not contiguous
    x1, s1, w1, ws1 = case(64, 512, 3)  # one unit a row block
    assert not ring_fp8_ok(x1[:1], s1, w1, ws1)
    x2, s2, w2, ws2 = case(64, 4160, 4)  # 65 chunks
    assert not ring_fp8_ok(x2[:1], s2, w2, ws2)
    with pytest.raises(ValueError, match="ring_fp8_gemv takes one row"):
        ring_fp8_gemv(xq[:1], sx, w, ws.half())


def test_ring_fp8_chain_in_a_graph_with_pdl():
    """Four dependent fp8 products (each one's output quantized per token for the next), eager
    and then replayed from a CUDA graph captured with PDL, against the reference chain."""
    from kiln.kernels.quant_act import quant_per_token
    from kiln.kernels.ring_fp8 import ring_fp8_gemv, ring_fp8_ref

    dims = [(6144, 4096), (4096, 6144), (14336, 4096), (4096, 14336)]
    layers = [case(n, k, 20 + i)[2:] for i, (n, k) in enumerate(dims)]
    x = torch.randn(1, 4096, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9)
                    ).to(torch.bfloat16)

    def run():
        h = x
        for w, ws in layers:
            hq, hs = quant_per_token(h, torch.float8_e4m3fn)
            h = ring_fp8_gemv(hq[:1], hs.float(), w, ws)
        return h

    want = x
    for w, ws in layers:
        wq, wsx = quant_per_token(want, torch.float8_e4m3fn)
        want = ring_fp8_ref(wq[:1], wsx.float(), w, ws)

    def check(out):
        assert rel_err(out, want) < 2e-2

    eager_then_graph(run, check, 3, 10)


def test_engine_greedy_tokens_with_and_without_the_fp8_ring(tmp_path, monkeypatch):
    """An fp8 engine of a model wide enough for the kernel decodes its batch-1 rows through it
    with KILN_RING_FP8=1 (never with 0, nor by default with the rest of the ring path on),
    compiles nothing after start-up, and gives the other path's greedy tokens under the top-5
    rule."""
    import kiln.kernels.ring_fp8 as rf
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama-d2048", tmp_path / "src", seed=9, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"), QuantConfig("fp8"),
                                       eval_tokens=0, device="cuda", progress=False,
                                       calib_samples=4))["path"]
    prompts = [{"prompt_token_ids": list(range(5 + i, 50 + 3 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    calls, runs = {}, {}
    real = rf._ring_fp8_kernel.run

    def counting(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)
    monkeypatch.setattr(rf._ring_fp8_kernel, "run", counting)
    for name, ring, fp8 in (("off", "0", "0"), ("on", "0", "1"), ("ring path", "1", None)):
        monkeypatch.setenv("KILN_RING_GEMV", ring)
        if fp8 is None:
            monkeypatch.delenv("KILN_RING_FP8", raising=False)
        else:
            monkeypatch.setenv("KILN_RING_FP8", fp8)
        llm = LLM(str(engine), device="cuda", num_kv_blocks=256, max_num_seqs=1)
        runs[name] = [o.outputs[0] for o in llm.generate(prompts, params)]  # batch 1
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        del llm
        torch.cuda.empty_cache()
    assert calls.get("on", 0) > 0 and calls.get("off", 0) == 0 and calls.get("ring path", 0) == 0
    assert_top5_agree(runs["on"], runs["off"])
