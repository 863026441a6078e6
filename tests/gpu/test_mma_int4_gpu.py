"""The tensor-core int4 GEMV from registers (kiln.kernels.mma_int4, Gluon) against the float32
reference product, its split-K finish (partials summed in split order by the last program: the
same bits every run), its use under CUDA graphs with PDL, and an int4-wo engine's greedy tokens
with and without it (KILN_INT4_MMA)."""

import pytest
import torch

from gpu_helpers import eager_then_graph, randn, rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="needs an sm_90 GPU")

# (N, K): 8B layers (qkv, o, gate_up, down, LM head) and small ones
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096),
          (64, 128), (192, 384), (512, 1280)]


def _weights(n, k, gen):
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen, device="cuda")
    s = torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 1e-3
    return q, s


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("n,k", SHAPES)
def test_int4_mma_gemv_matches_reference(n, k, m):
    from kiln.kernels.mma_int4 import int4_mma_gemv, pack_int4_mma
    from kiln.kernels.quant_ref import int4_wo_linear_ref

    gen = torch.Generator(device="cuda").manual_seed(n + 7 * k + m)
    q, s = _weights(n, k, gen)
    x = randn(m, k, gen=gen, dtype=torch.bfloat16)
    words, sp = pack_int4_mma(q, s)
    ref = int4_wo_linear_ref(x.float(), q, s, 128)
    for split in (0, 1, 3):
        out = int4_mma_gemv(x, words, sp, None, n, k, split=split)
        assert out.shape == (m, n) and out.dtype == torch.bfloat16
        assert rel_err(out, ref) < 4e-3, split
        again = int4_mma_gemv(x, words, sp, None, n, k, split=split)  # counters re-armed
        assert torch.equal(again, out), split


@pytest.mark.parametrize("early", [False, True])
def test_int4_mma_gemv_bias_strided_rows_and_graph(early):
    from kiln.kernels.mma_int4 import int4_mma_gemv, pack_int4_mma
    from kiln.kernels.quant_ref import int4_wo_linear_ref

    n, k, m = 1024, 2048, 5
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, s = _weights(n, k, gen)
    bias = randn(n, gen=gen, dtype=torch.bfloat16)
    wide = randn(m, k + 64, gen=gen, dtype=torch.bfloat16)
    x = wide[:, :k]  # rows with a stride of k + 64
    words, sp = pack_int4_mma(q, s)
    ref = int4_wo_linear_ref(x.float(), q, s, 128, bias.float())
    first = int4_mma_gemv(x, words, sp, bias, n, k, early=early)
    assert rel_err(first, ref) < 4e-3

    def check(out):
        assert torch.equal(out, first)
    eager_then_graph(lambda: int4_mma_gemv(x, words, sp, bias, n, k, early=early), check, 2, 3)


def test_int4_mma_gemv_rejects_what_it_cannot_take():
    from kiln.kernels.mma_int4 import int4_mma_gemv, pack_int4_mma

    gen = torch.Generator(device="cuda").manual_seed(4)
    q, s = _weights(128, 256, gen)
    words, sp = pack_int4_mma(q, s)
    with pytest.raises(ValueError, match="up to 8"):
        int4_mma_gemv(randn(9, 256, gen=gen, dtype=torch.bfloat16), words, sp, None, 128, 256)
    with pytest.raises(ValueError, match="up to 8"):
        int4_mma_gemv(randn(1, 256, gen=gen, dtype=torch.float16), words, sp, None, 128, 256)


def test_engine_greedy_tokens_with_and_without_int4_mma(tmp_path, monkeypatch):
    """An int4-wo engine (int4 LM head too) loaded with KILN_INT4_MMA=1 keeps the second copy in
    its layers, decodes through the kernel, compiles nothing after start-up, and gives the
    default's greedy tokens under the top-5 rule."""
    from gpu_helpers import assert_top5_agree, greedy_with_and_without

    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig
    import kiln.kernels.mma_int4 as mi

    write_random_model("tiny-llama-d128", tmp_path / "src", seed=9, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                       QuantConfig("int4-wo", lm_head="int4-wo"), eval_tokens=0,
                                       device="cuda", progress=False, calib_samples=4))["path"]
    got = greedy_with_and_without(monkeypatch, engine, "KILN_INT4_MMA", mi._int4_mma_kernel,
                                  lambda mod: getattr(mod, "int4_mma", None) is not None)
    packed, calls, runs = got["packed"], got["calls"], got["runs"]
    assert packed["0"] == 0 and packed["1"] > 0
    assert calls.get("0", 0) == 0 and calls.get("1", 0) > 0
    assert_top5_agree(runs["1"], runs["0"])
