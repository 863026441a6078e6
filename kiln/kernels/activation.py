"""SiLU(gate) * up on a fused [.., 2*I] gate/up projection."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start
from kiln.kernels.quant_act import (QuantizedRows, quantize_rows, quantized_rows_buffers,
                                    store_padding_row, store_row_quantized)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Reference: x = [gate | up] on the last dim; returns silu(gate) * up in x's dtype."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _silu_mul_cols(x_ptr, row, cols, mask, x_row_stride, inter):
    """silu(gate) * up over `cols` of one row, rounded to the input dtype (returned in it)."""
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * x_row_stride + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    # Round silu(gate) to the input dtype before the product, as the two torch ops do.
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    y = act.to(tl.float32) * up.to(tl.float32)
    return y.to(gate.dtype)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_row_stride, out_row_stride, inter,
                         BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    y = _silu_mul_cols(x_ptr, row, cols, mask, x_row_stride, inter)
    tl.store(out_ptr + row * out_row_stride + cols, y, mask=mask)


@triton.jit
def _silu_and_mul_quant_kernel(x_ptr, q_ptr, s_ptr, x_row_stride, q_row_stride, M, inter,
                               IS_INT8: tl.constexpr, BLOCK: tl.constexpr,
                               PDL: tl.constexpr = False):
    # One program per row, the whole row in registers: SiLU-mul, then the row's per-token
    # quantization (the bits quant_per_token gives for silu_and_mul's output, never written).
    # Rows M.. of a padded grid get zero codes and scale 1.
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < inter
    if row >= M:
        store_padding_row(q_ptr, s_ptr, row, cols, mask, q_row_stride, BLOCK)
        return
    y = _silu_mul_cols(x_ptr, row, cols, mask, x_row_stride, inter)
    store_row_quantized(y.to(tl.float32), q_ptr, s_ptr, row, cols, mask, q_row_stride, IS_INT8)


# Widest intermediate size the quantizing kernel holds in registers (one row per program);
# wider rows run silu_and_mul then quant_per_token.
QUANT_MAX_INTER = 16384


def silu_quant_warps(block: int) -> int:
    """Warps of the quantizing SiLU-mul's one-row programs: block / 1024 up to 16, or
    KILN_SILU_QUANT_WARPS (a power of two up to 32; read at each launch, for A/B runs)."""
    given = os.environ.get("KILN_SILU_QUANT_WARPS", "")
    if given:
        warps = int(given)
        if warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"KILN_SILU_QUANT_WARPS={given}: a power of two from 1 to 32")
        return min(warps, max(1, block // 32))
    return max(1, min(16, block // 1024))


def silu_and_mul_quant(x: torch.Tensor, qdtype: torch.dtype) -> QuantizedRows:
    """SiLU-mul whose output is quantized per token to ``qdtype`` (float8_e4m3fn or int8) in the
    same kernel: the codes and scales quant_per_token gives for silu_and_mul's output."""
    inter = x.shape[-1] // 2
    lead = (*x.shape[:-1], inter)
    if not use_triton(x) or x.numel() == 0 or inter > QUANT_MAX_INTER:
        return quantize_rows(silu_and_mul(x), qdtype, lead)
    rows2 = x.reshape(-1, 2 * inter)
    if rows2.stride(-1) != 1:
        rows2 = rows2.contiguous()
    m = rows2.shape[0]
    q, s = quantized_rows_buffers(m, inter, qdtype, x.device)
    block = triton.next_power_of_2(inter)
    _silu_and_mul_quant_kernel[(q.shape[0],)](
        rows2, q, s, rows2.stride(0), q.stride(0), m, inter, IS_INT8=qdtype == torch.int8,
        BLOCK=block, num_warps=silu_quant_warps(block), **pdl_args(x, small=True))
    return QuantizedRows(q, s, m, lead, x.dtype)


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
                               BLOCK=block, num_warps=4, **pdl_args(x, small=True))
    return out
