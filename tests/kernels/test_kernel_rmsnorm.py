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
