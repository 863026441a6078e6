"""The fp8 W8A8 and bfloat16 tensor-core GEMV from registers (kiln.kernels.mma_direct, Gluon)
against the float32 reference product, its split-K finish (partials summed in split order by the
last program: the same bits every run), its use under CUDA graphs with PDL, and fp8 and bf16
engines' greedy tokens with and without it (KILN_MMA_DIRECT)."""

import pytest
import torch

from gpu_helpers import eager_then_graph, randn, rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="needs an sm_90 GPU")

# (N, K): 8B layers (qkv, o, gate_up, down, LM head) and small ones
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096),
          (32, 256), (96, 768), (512, 1280)]
FP8 = torch.float8_e4m3fn


def _case(n, k, m, dtype, gen):
    """(x, x scales, weight, weight scales, float32 reference) for m rows."""
    w = randn(n, k, gen=gen) * 0.02
    x = randn(m, k, gen=gen)
    if dtype == FP8:
        ws = w.abs().amax(dim=1) / 448.0
        xs = x.abs().amax(dim=1, keepdim=True) / 448.0
        wq, xq = (w / ws[:, None]).to(FP8), (x / xs).to(FP8)
        return xq, xs, wq, ws, (xq.float() @ wq.float().t()) * xs * ws[None, :]
    wb, xb = w.to(torch.bfloat16), x.to(torch.bfloat16)
    return xb, None, wb, None, xb.float() @ wb.float().t()


@pytest.mark.parametrize("dtype", [FP8, "fp8-cvt", torch.bfloat16], ids=["fp8", "fp8-cvt", "bf16"])
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("n,k", SHAPES)
def test_mma_direct_gemv_matches_reference(n, k, m, dtype):
    from kiln.kernels.mma_direct import mma_direct_gemv, mma_direct_ok, pack_mma_direct

    cvt = dtype == "fp8-cvt"  # the written-out conversions and chained f16 mmas
    dtype = FP8 if cvt else dtype

    r = 2 if mma_direct_ok(n, k, dtype, 2) else 1
    gen = torch.Generator(device="cuda").manual_seed(n + 7 * k + m)
    x, xs, w, ws, ref = _case(n, k, m, dtype, gen)
    words = pack_mma_direct(w, r)
    for split in (0, 1, 3):
        out = mma_direct_gemv(x, xs, words, ws, None, n, k, torch.bfloat16, split=split, cvt=cvt)
        assert out.shape == (m, n) and out.dtype == torch.bfloat16
        assert rel_err(out, ref) < 4e-3, split
        again = mma_direct_gemv(x, xs, words, ws, None, n, k, torch.bfloat16, split=split, cvt=cvt)
        assert torch.equal(again, out), split  # counters re-armed, same order


@pytest.mark.parametrize("dtype", [FP8, torch.bfloat16], ids=["fp8", "bf16"])
@pytest.mark.parametrize("early", [False, True])
def test_mma_direct_gemv_bias_strided_rows_and_graph(dtype, early):
    from kiln.kernels.mma_direct import mma_direct_gemv, pack_mma_direct

    n, k, m = 1024, 2048, 5
    gen = torch.Generator(device="cuda").manual_seed(3)
    wide, xs, w, ws, _ = _case(n, k + 256, m, dtype, gen)
    w = w[:, :k].contiguous()
    x = wide[:, :k]  # rows with a stride of k + 256
    bias = randn(n, gen=gen, dtype=torch.bfloat16)
    ref = x.float() @ w.float().t()
    if dtype == FP8:
        ref = ref * xs * ws[None, :]
    ref = ref + bias.float()
    words = pack_mma_direct(w)
    first = mma_direct_gemv(x, xs, words, ws, bias, n, k, torch.bfloat16, early=early)
    assert rel_err(first, ref) < 4e-3

    def check(out):
        assert torch.equal(out, first)
    eager_then_graph(lambda: mma_direct_gemv(x, xs, words, ws, bias, n, k, torch.bfloat16,
                                             early=early), check, 2, 3)


def test_mma_direct_gemv_rejects_what_it_cannot_take():
    from kiln.kernels.mma_direct import mma_direct_gemv, pack_mma_direct

    gen = torch.Generator(device="cuda").manual_seed(4)
    x, xs, w, ws, _ = _case(64, 256, 9, FP8, gen)
    words = pack_mma_direct(w)
    with pytest.raises(ValueError, match="up to 8"):
        mma_direct_gemv(x, xs, words, ws, None, 64, 256, torch.bfloat16)
    with pytest.raises(ValueError, match="up to 8"):
        mma_direct_gemv(x[:2], None, words, ws, None, 64, 256, torch.bfloat16)  # no x scales
    with pytest.raises(ValueError, match="up to 8"):
        mma_direct_gemv(x[:2].float().to(torch.float16), None, words, None, None, 64, 256,
                        torch.bfloat16)


@pytest.mark.parametrize("quant", ["fp8", "none"])
def test_engine_greedy_tokens_with_and_without_mma_direct(tmp_path, monkeypatch, quant):
    """An fp8 engine (fp8 LM head too) or an unquantized bf16 model loaded with KILN_MMA_DIRECT=1
    keeps the second copy in its layers, decodes through the kernel, compiles nothing after
    start-up, and gives the default's greedy tokens under the top-5 rule."""
    from gpu_helpers import assert_top5_agree, greedy_with_and_without

    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig
    import kiln.kernels.mma_direct as md

    write_random_model("tiny-llama-d128", tmp_path / "src", seed=9, dtype="bfloat16")
    model = str(tmp_path / "src")
    if quant == "fp8":
        model = build_engine(BuildOptions(model, str(tmp_path / "e"),
                                          QuantConfig("fp8", lm_head="fp8"), eval_tokens=0,
                                          device="cuda", progress=False, calib_samples=4))["path"]
    got = greedy_with_and_without(
        monkeypatch, model, "KILN_MMA_DIRECT", md._mma_direct_kernel,
        lambda mod: getattr(mod, "fp8_mma", None) is not None or getattr(mod, "mma_direct", None) is not None)
    packed, calls, runs = got["packed"], got["calls"], got["runs"]
    assert packed["0"] == 0 and packed["1"] > 0
    assert calls.get("0", 0) == 0 and calls.get("1", 0) > 0
    assert_top5_agree(runs["1"], runs["0"])
