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
