"""Triton RMSNorm / fused add + RMSNorm against the torch references (interpreter, CPU)."""

import pytest
import torch

from kernel_cases import TOL, rel_err
from kiln.kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 64), (7, 100), (2, 3, 48)])
def test_rms_norm_matches_reference(dtype, shape, gen, poison_allocations):
    x = (torch.randn(*shape, generator=gen) * 3).to(dtype)
    w = torch.randn(shape[-1], generator=gen).to(dtype)
    out = rms_norm(x, w, 1e-6)
    ref = rms_norm_ref(x, w, 1e-6)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


def test_rms_norm_row_strided_input(gen, poison_allocations):
    # A column slice of a wider tensor: rows are strided, the last dim is contiguous.
    wide = torch.randn(5, 96, generator=gen)
    x = wide[:, 16:80]
    w = torch.randn(64, generator=gen)
    assert rel_err(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5)) < TOL[torch.float32]


def test_rms_norm_mixed_weight_dtype_promotes(gen):
    x = torch.randn(3, 32, generator=gen).half()
    w = torch.randn(32, generator=gen)  # float32 weight, as the reference's `weight * h` promotes
    out = rms_norm(x, w, 1e-6)
    ref = rms_norm_ref(x, w, 1e-6)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 64), (9, 80)])
def test_fused_add_rms_norm_updates_residual(dtype, shape, gen, poison_allocations):
    x = torch.randn(*shape, generator=gen).to(dtype)
    residual = torch.randn(*shape, generator=gen).to(dtype)
    w = torch.randn(shape[-1], generator=gen).to(dtype)
    ref_out, ref_res = fused_add_rms_norm_ref(x, residual.clone(), w, 1e-6)
    out, new_res = fused_add_rms_norm(x, residual, w, 1e-6)
    assert new_res.data_ptr() == residual.data_ptr(), "residual must be updated in place"
    assert torch.equal(new_res, ref_res), "the add must round exactly as x + residual does"
    assert rel_err(out, ref_out) < TOL[dtype]


def test_fused_add_rms_norm_reference_path_also_in_place(gen, monkeypatch):
    monkeypatch.setenv("KILN_KERNELS", "reference")
    x = torch.randn(4, 32, generator=gen)
    residual = torch.randn(4, 32, generator=gen)
    expected = x + residual
    _, new_res = fused_add_rms_norm(x, residual, torch.ones(32), 1e-6)
    assert new_res.data_ptr() == residual.data_ptr()
    assert torch.equal(residual, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 20])
@pytest.mark.parametrize("with_residual", [False, True])
def test_norm_quant_is_norm_then_per_token_quant(dtype, m, with_residual, gen, poison_allocations):
    """The quantizing norm gives the codes and scales quant_per_token makes of the norm's output,
    the same residual sum, and (above 16 rows) rows padded to 16 with zero codes and scale 1."""
    from kiln.kernels.quant_act import quant_per_token
    from kiln.kernels.rmsnorm import QuantizedRows, fused_add_rms_norm_quant, rms_norm_quant

    hidden = 96
    x = (torch.randn(m, hidden, generator=gen) * 3).to(dtype)
    x[:, 7] *= 40.0  # an outlier channel sets the scales
    w = torch.randn(hidden, generator=gen).to(dtype)
    if with_residual:
        residual = torch.randn(m, hidden, generator=gen).to(dtype)
        res_ref = residual.clone()
        normed, res_ref = fused_add_rms_norm(x, res_ref, w, 1e-6)
        got, new_res = fused_add_rms_norm_quant(x, residual, w, 1e-6, torch.float8_e4m3fn)
        assert new_res.data_ptr() == residual.data_ptr() and torch.equal(new_res, res_ref)
    else:
        normed = rms_norm(x, w, 1e-6)
        got = rms_norm_quant(x, w, 1e-6, torch.float8_e4m3fn)
    q_ref, s_ref = quant_per_token(normed, torch.float8_e4m3fn)
    assert isinstance(got, QuantizedRows) and got.m == m and got.shape == (m, hidden)
    assert got.dtype == dtype
    rows = 32 if m > 16 else m
    assert got.q.shape == (rows, hidden) and got.scale.shape == (rows, 1)
    assert torch.equal(got.q[:m].view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(got.scale[:m], s_ref)
    if rows > m:
        assert not got.q[m:].view(torch.uint8).any() and torch.equal(got.scale[m:], torch.ones(rows - m, 1))


@pytest.mark.parametrize("m", [1, 3, 9, 20])
def test_fp8_linear_of_quantized_rows_is_bit_identical(m, gen, poison_allocations):
    """fp8_linear on a QuantizedRows gives the bits it gives on the norm's float output."""
    from kiln.kernels.quant_matmul import fp8_linear
    from kiln.kernels.rmsnorm import fused_add_rms_norm_quant
    from kiln.quant.fp8 import quantize_fp8_weight

    hidden, n = 128, 48
    x = torch.randn(m, hidden, generator=gen).to(torch.bfloat16)
    residual = torch.randn(m, hidden, generator=gen).to(torch.bfloat16)
    w = torch.randn(hidden, generator=gen).to(torch.bfloat16)
    wq, ws = quantize_fp8_weight(torch.randn(n, hidden, generator=gen) * 0.05)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    normed, _ = fused_add_rms_norm(x, residual.clone(), w, 1e-6)
    rows, _ = fused_add_rms_norm_quant(x, residual.clone(), w, 1e-6, torch.float8_e4m3fn)
    want = fp8_linear(normed, wq, ws, bias)
    got = fp8_linear(rows, wq, ws, bias)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
