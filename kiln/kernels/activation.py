"""SiLU(gate) * up on a fused [.., 2*I] gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Reference: x = [gate | up] on the last dim; returns silu(gate) * up in x's dtype."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_row_stride, out_row_stride, inter,
                         BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * x_row_stride + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    # Round silu(gate) to the input dtype before the product, as the two torch ops do.
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    y = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(gate.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SiLU·mul (dispatcher)."""
    if not use_triton(x) or x.numel() == 0:
        return silu_and_mul_ref(x)
    inter = x.shape[-1] // 2
    rows = x.reshape(-1, 2 * inter)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(*x.shape[:-1], inter, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(inter))
    grid = (rows.shape[0], triton.cdiv(inter, block))
    _silu_and_mul_kernel[grid](rows, out.view(-1, inter), rows.stride(0), inter, inter,
                               BLOCK=block, num_warps=4, **pdl_args(x))
    return out
