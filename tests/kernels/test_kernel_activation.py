"""Triton SiLU·mul against the torch reference (interpreter, CPU)."""

import pytest
import torch

from kernel_cases import TOL, rel_err
from kiln.kernels.activation import silu_and_mul, silu_and_mul_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2 * 64), (5, 2 * 200), (2, 3, 2 * 1100)])
def test_silu_and_mul_matches_reference(dtype, shape, gen, poison_allocations):
    x = (torch.randn(*shape, generator=gen) * 4).to(dtype)
    out = silu_and_mul(x)
    ref = silu_and_mul_ref(x)
    assert out.shape == ref.shape == (*shape[:-1], shape[-1] // 2)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 10)])
@pytest.mark.parametrize("inter", [200, 64])
def test_silu_and_mul_quant_is_silu_then_per_token_quant(dtype, lead, inter, gen,
                                                         poison_allocations):
    """The quantizing SiLU-mul gives the codes and scales quant_per_token makes of silu_and_mul's
    output, with rows padded to 16 (zero codes, scale 1) above 16 rows."""
    from kiln.kernels.activation import silu_and_mul_quant
    from kiln.kernels.quant_act import QuantizedRows, quant_per_token

    x = (torch.randn(*lead, 2 * inter, generator=gen) * 4).to(dtype)
    x[..., inter + 3] *= 20.0  # an outlier in the up half sets the scales
    got = silu_and_mul_quant(x, torch.float8_e4m3fn)
    m = x.numel() // x.shape[-1]
    q_ref, s_ref = quant_per_token(silu_and_mul(x).reshape(m, inter), torch.float8_e4m3fn)
    assert isinstance(got, QuantizedRows) and got.m == m and got.shape == (*lead, inter)
    assert got.dtype == dtype
    rows = 32 if m > 16 else m
    assert got.q.shape == (rows, inter)
    assert torch.equal(got.q[:m].view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(got.scale[:m], s_ref)
    if rows > m:
        assert not got.q[m:].view(torch.uint8).any() and torch.equal(got.scale[m:], torch.ones(rows - m, 1))


def test_silu_and_mul_quant_wide_rows_fall_back(gen, monkeypatch):
    """Rows wider than QUANT_MAX_INTER run silu_and_mul then quant_per_token: the same result."""
    from kiln.kernels import activation
    from kiln.kernels.quant_act import quant_per_token

    monkeypatch.setattr(activation, "QUANT_MAX_INTER", 32)
    x = torch.randn(2, 2 * 48, generator=gen).to(torch.bfloat16)
    got = activation.silu_and_mul_quant(x, torch.float8_e4m3fn)
    q_ref, s_ref = quant_per_token(silu_and_mul(x), torch.float8_e4m3fn)
    assert torch.equal(got.q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(got.scale, s_ref)


def test_silu_quant_warps_knob(monkeypatch):
    """KILN_SILU_QUANT_WARPS sets the quantizing SiLU-mul's warps (at most one per 32 columns);
    unset, block / 1024 up to 16; anything but a power of two up to 32 is refused."""
    from kiln.kernels.activation import silu_quant_warps

    monkeypatch.delenv("KILN_SILU_QUANT_WARPS", raising=False)
    assert [silu_quant_warps(b) for b in (64, 2048, 16384, 32768)] == [1, 2, 16, 16]
    monkeypatch.setenv("KILN_SILU_QUANT_WARPS", "32")
    assert silu_quant_warps(16384) == 32 and silu_quant_warps(256) == 8
    monkeypatch.setenv("KILN_SILU_QUANT_WARPS", "12")
    with pytest.raises(ValueError, match="KILN_SILU_QUANT_WARPS=12"):
        silu_quant_warps(16384)
