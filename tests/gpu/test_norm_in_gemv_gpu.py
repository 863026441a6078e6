"""Add + RMSNorm computed by the GEMV that reads it (KILN_NORM_IN_GEMV=1) on CUDA: at the 8B
shapes (and a 70B-wide row, read in two passes), under programmatic dependent launch and in CUDA
graphs, the new residual is x + residual bit for bit and the product matches the add + RMSNorm
launch followed by the tensor-core GEMV to within the rounding of the norm's output (the row's
sum of squares is reduced in another order, so a normalized element may differ by one ulp);
with fp8 W8A8 weights, the quantizing norm launch followed by the GEMV on its codes, to within
fp8 rounding; with int4 weight-only ones, on each x path of the FMA GEMV. bf16, fp8, int4-wo
and int8-wo engines decode greedy tokens that agree with and without it under the usual rule,
nothing compiled after start-up."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels import mma_gemv, rmsnorm  # noqa: E402
from gpu_helpers import (assert_top5_agree, eager_then_graph, generate_per_flag,  # noqa: E402
                         rel_err)


def _reference(x, residual, g, w, eps):
    """float64 product of the float64 add + RMSNorm (the residual add rounded as torch does)."""
    h = (x + residual).double()
    normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return normed * g.double() @ w.double().t()


def _check_fused(run, summed, launches, ref, tol, ref_factor, ref_slack, residual=None, kept=None):
    """Run ``run`` (one fused launch: (output, new residual)) eagerly under PDL, then captured in
    a graph, checking each output: the new residual is ``summed`` bit for bit (and ``residual``
    still ``kept``, if given), the output within ``tol`` of the separate launches and no
    further from the float64 reference than ref_factor times theirs plus ref_slack, and every
    launch gives the first one's bits."""
    first = []

    def check(result):
        out, new_residual = result
        assert torch.equal(new_residual, summed)
        if kept is not None:
            assert torch.equal(residual, kept)
        assert rel_err(out, launches) < tol
        assert rel_err(out, ref) < ref_factor * rel_err(launches, ref) + ref_slack
        if first:
            assert torch.equal(out, first[0])  # every launch gives the same bits
        else:
            first.append(out.clone())

    eager_then_graph(run, check, 5, 20)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("shape", [(4096, 6144), (4096, 28672), (8192, 1024), (256, 512)])
def test_norm_in_gemv_under_pdl_and_graphs(shape, rows, dtype, monkeypatch):
    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    k, n = shape
    gen = torch.Generator(device="cuda").manual_seed(rows + k)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    residual = (torch.randn(rows, k, generator=gen, device="cuda") * 4).to(dtype)
    g = (1 + 0.2 * torch.randn(k, generator=gen, device="cuda")).to(dtype)
    w = (torch.randn(n, k, generator=gen, device="cuda") * 0.02).to(dtype)
    assert mma_gemv.norm_in_gemv_ok(x, residual, g, w)
    summed = residual.clone()
    normed, _ = rmsnorm.fused_add_rms_norm(x, summed, g, 1e-5)
    launches = mma_gemv.tc_gemv(normed, None, w, None, None, dtype)
    ref = _reference(x, residual, g, w, 1e-5)
    tol = 2e-3 if dtype == torch.bfloat16 else 5e-4

    def run():
        pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, 1e-5)
        return mma_gemv.tc_gemv(x, None, w, None, None, dtype, norm=pending), new_residual

    _check_fused(run, summed, launches, ref, tol, 1.5, 1e-4, residual, residual.clone())


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("shape", [(4096, 6144), (4096, 28672), (256, 512)])
def test_norm_in_fp8_gemv_under_pdl_and_graphs(shape, rows, monkeypatch):
    """fp8 weights: the GEMV normalizes and quantizes per token as it loads (under PDL with its
    first weight tile loaded before the wait, the fp8 default)."""
    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    k, n = shape
    gen = torch.Generator(device="cuda").manual_seed(rows + n)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(torch.bfloat16)
    residual = (torch.randn(rows, k, generator=gen, device="cuda") * 4).to(torch.bfloat16)
    g = (1 + 0.2 * torch.randn(k, generator=gen, device="cuda")).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=gen, device="cuda") * 0.02).to(torch.bfloat16)
    ws = w.float().abs().amax(1) / 448
    w8 = (w.float() / ws[:, None]).to(torch.float8_e4m3fn)
    assert mma_gemv.norm_in_gemv_ok(x, residual, g, w8)
    summed = residual.clone()
    quantized, _ = rmsnorm.fused_add_rms_norm_quant(x, summed, g, 1e-5, torch.float8_e4m3fn)
    launches = mma_gemv.tc_gemv(quantized.q[:rows], quantized.scale[:rows], w8, ws, None,
                                torch.bfloat16)
    ref = _reference(x, residual, g, w8.float() * ws[:, None], 1e-5)

    def run():
        pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, 1e-5)
        return mma_gemv.tc_gemv(x, None, w8, ws, None, torch.bfloat16, norm=pending), new_residual

    _check_fused(run, summed, launches, ref, 3e-2, 1.2, 1e-3)


@pytest.mark.parametrize("f16", ["2", "1", "0"])  # x as double words, words, or float32
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("shape", [(4096, 6144), (4096, 28672), (256, 512)])
def test_norm_in_int4_gemv_under_pdl_and_graphs(shape, rows, dtype, f16, monkeypatch):
    """int4 weight-only (rows in blocks of 16, as loaded on CUDA): the FMA GEMV normalizes x
    as it reads it, on each of its x paths (KILN_INT4_F16: 2 double words, 1 words, 0 float32
    products), within the norm output's rounding of the launches."""
    from kiln.kernels import int4_bits, quant_matmul, quant_ref

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    monkeypatch.setenv("KILN_INT4_F16", f16)
    k, n = shape
    gen = torch.Generator(device="cuda").manual_seed(rows + n)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    residual = (torch.randn(rows, k, generator=gen, device="cuda") * 4).to(dtype)
    g = (1 + 0.2 * torch.randn(k, generator=gen, device="cuda")).to(dtype)
    qweight = torch.randint(0, 256, (n, k // 2), generator=gen, device="cuda", dtype=torch.uint8)
    scales = torch.rand(n, k // 128, generator=gen, device="cuda") * 0.002 + 0.0005
    tiled = int4_bits.tile_int4_rows(qweight, 16, 128)
    assert quant_matmul.norm_in_wo_gemv_ok(x, residual, g, k, tiled)
    summed = residual.clone()
    normed, _ = rmsnorm.fused_add_rms_norm(x, summed, g, 1e-5)
    launches = quant_matmul.int4_wo_linear(normed, tiled, scales, 128, row_block=16)
    ref = _reference(x, residual, g, quant_ref.dequantize_int4_ref(qweight, scales, 128), 1e-5)
    tol = 2e-3 if dtype == torch.bfloat16 else 5e-4

    def run():
        pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, 1e-5)
        return quant_matmul.int4_wo_linear(pending, tiled, scales, 128, row_block=16), new_residual

    _check_fused(run, summed, launches, ref, tol, 1.5, 1e-4)


@pytest.mark.parametrize("scheme", ["int4-wo", "int8-wo"])
def test_weight_only_engine_greedy_tokens_with_and_without_norm_in_gemv(tmp_path, monkeypatch,
                                                                        scheme):
    from kiln import SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "src", seed=7, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                       QuantConfig(scheme), eval_tokens=0, device="cuda",
                                       progress=False, calib_samples=4))["path"]
    prompts = [{"prompt_token_ids": list(range(5 + i, 40 + 3 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    # up to NORM_IN_GEMV_MAX_M decode rows: three sequences at once
    runs = generate_per_flag(engine, "KILN_NORM_IN_GEMV", prompts, params, monkeypatch,
                             max_num_seqs=4)
    assert_top5_agree(runs["1"], runs["0"], f"{scheme} norm in GEMV")


def test_fp8_engine_greedy_tokens_with_and_without_norm_in_gemv(tmp_path, monkeypatch):
    from kiln import SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "src", seed=6, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "fp8"),
                                       QuantConfig("fp8"), eval_tokens=0, device="cuda",
                                       progress=False))["path"]
    prompts = [{"prompt_token_ids": list(range(7 + i, 50 + 2 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    # up to NORM_IN_GEMV_MAX_M decode rows: three sequences at once
    runs = generate_per_flag(engine, "KILN_NORM_IN_GEMV", prompts, params, monkeypatch,
                             max_num_seqs=4)
    assert_top5_agree(runs["1"], runs["0"], "fp8 norm in GEMV")


def test_engine_greedy_tokens_with_and_without_norm_in_gemv(tmp_path, monkeypatch):
    from kiln import SamplingParams
    from kiln.models.random_model import write_random_model

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "m", seed=5, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(4 + i, 45 + 3 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    # up to NORM_IN_GEMV_MAX_M decode rows: three sequences at once
    runs = generate_per_flag(tmp_path / "m", "KILN_NORM_IN_GEMV", prompts, params, monkeypatch,
                             max_num_seqs=4)
    assert_top5_agree(runs["1"], runs["0"], "norm in GEMV")
