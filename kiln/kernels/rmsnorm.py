"""RMSNorm and fused residual-add + RMSNorm."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton, weight_prewait
from kiln.kernels.pdl import pdl_start
from kiln.kernels.quant_act import (QuantizedRows, quantized_rows_buffers, quantize_rows,
                                    store_padding_row, store_row_quantized)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference RMSNorm over the last dim; statistics in float32, scale applied in x's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: residual' = x + residual (in x's dtype); returns (rms_norm(residual'), residual')."""
    new_residual = x + residual
    return rms_norm_ref(new_residual, weight, eps), new_residual


@triton.jit
def _normed_row(x_ptr, res_ptr, w_ptr, w, row, cols, mask, x_row_stride, res_row_stride, hidden,
                eps, out_ty: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PRE_WAIT: tl.constexpr):
    """One row's RMSNorm output, rounded to out_ty, as float32 (the residual sum written back).
    PRE_WAIT: w is the norm weight, already loaded (see _rms_norm_kernel); else it is loaded
    here from w_ptr, after the row's sum."""
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * res_row_stride + cols, mask=mask, other=0.0)
        # The add rounds to the input dtype, as `x + residual` does in torch.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_ptr + row * res_row_stride + cols, x, mask=mask)
    h = x.to(tl.float32)
    mean_sq = tl.sum(h * h, axis=0) / hidden
    normed = (h * tl.rsqrt(mean_sq + eps)).to(x.dtype)
    if not PRE_WAIT:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = normed.to(tl.float32).to(out_ty).to(tl.float32) * w.to(out_ty).to(tl.float32)
    return y.to(out_ty).to(tl.float32)


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, x_row_stride, res_row_stride, out_row_stride,
                     hidden, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
                     PRE_WAIT: tl.constexpr = False):
    # One program per row: the whole row sits in registers, so x (and the residual) are read once
    # and the sum is written back in the same pass. PRE_WAIT: the weight, which depends on no
    # kernel, is loaded before the PDL wait; read after the row's sum (two CTA barriers), its
    # load is one more memory round trip on a batch-1 decode step's critical path, twice a layer.
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    w = None
    if PRE_WAIT:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    out_ty = out_ptr.dtype.element_ty
    y = _normed_row(x_ptr, res_ptr, w_ptr, w, row, cols, mask, x_row_stride, res_row_stride,
                    hidden, eps, out_ty, HAS_RESIDUAL, PRE_WAIT)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ty), mask=mask)


@triton.jit
def _rms_norm_quant_kernel(x_ptr, res_ptr, w_ptr, q_ptr, s_ptr, x_row_stride, res_row_stride,
                           q_row_stride, M, hidden, eps, out_ty: tl.constexpr,
                           HAS_RESIDUAL: tl.constexpr, IS_INT8: tl.constexpr, BLOCK: tl.constexpr,
                           PDL: tl.constexpr = False, PRE_WAIT: tl.constexpr = False):
    # As _rms_norm_kernel, then the row's per-token quantization from the same registers: the
    # codes and scale quant_per_token would make of the out_ty output, which is never written.
    # Rows M.. of a padded grid get zero codes and scale 1 (what quant_per_token pads with).
    # PRE_WAIT: the weight is loaded before the PDL wait (see _rms_norm_kernel).
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    w = None
    if PRE_WAIT:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    if row >= M:
        store_padding_row(q_ptr, s_ptr, row, cols, mask, q_row_stride, BLOCK)
        return
    y = _normed_row(x_ptr, res_ptr, w_ptr, w, row, cols, mask, x_row_stride, res_row_stride,
                    hidden, eps, out_ty, HAS_RESIDUAL, PRE_WAIT)
    store_row_quantized(y, q_ptr, s_ptr, row, cols, mask, q_row_stride, IS_INT8)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """View t as [rows, hidden] with unit stride on the last dim (copying only when needed)."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(x2: torch.Tensor, res2: torch.Tensor | None, weight: torch.Tensor, out2: torch.Tensor,
            eps: float) -> None:
    hidden = x2.shape[1]
    block = triton.next_power_of_2(hidden)
    # Enough threads that each holds at most ~16 elements of the row.
    num_warps = max(1, min(16, block // 512))
    res_arg = res2 if res2 is not None else x2
    _rms_norm_kernel[(x2.shape[0],)](
        x2, res_arg, weight, out2, x2.stride(0), res_arg.stride(0), out2.stride(0), hidden, eps,
        HAS_RESIDUAL=res2 is not None, BLOCK=block, num_warps=num_warps, PRE_WAIT=weight_prewait(),
        **pdl_args(x2, small=True))


def _quantized_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                    eps: float, qdtype: torch.dtype) -> QuantizedRows:
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    m, hidden = x.numel() // x.shape[-1], x.shape[-1]
    if not use_triton(x) or m == 0:
        if residual is None:
            y = rms_norm_ref(x, weight, eps)
        else:
            y, new_residual = fused_add_rms_norm_ref(x, residual, weight, eps)
            residual.copy_(new_residual)
        return quantize_rows(y.to(out_dtype), qdtype, tuple(x.shape))
    x2 = _as_rows(x)
    q, s = quantized_rows_buffers(m, hidden, qdtype, x.device)
    rows = q.shape[0]
    res2 = residual.view(-1, hidden) if residual is not None else x2
    block = triton.next_power_of_2(hidden)
    _rms_norm_quant_kernel[(rows,)](
        x2, res2, weight.contiguous(), q, s, x2.stride(0), res2.stride(0), q.stride(0), m, hidden,
        eps, out_ty=_TL_DTYPES[out_dtype], HAS_RESIDUAL=residual is not None,
        IS_INT8=qdtype == torch.int8, BLOCK=block, num_warps=max(1, min(16, block // 512)),
        PRE_WAIT=weight_prewait(), **pdl_args(x2, small=True))
    return QuantizedRows(q, s, m, tuple(x.shape), out_dtype)


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   qdtype: torch.dtype) -> QuantizedRows:
    """RMSNorm whose output is quantized per token to ``qdtype`` (float8_e4m3fn or int8) in the
    same kernel: the codes and scales quant_per_token gives for rms_norm's output."""
    return _quantized_norm(x, None, weight, eps, qdtype)


def fused_add_rms_norm_quant(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                             eps: float, qdtype: torch.dtype) -> tuple[QuantizedRows, torch.Tensor]:
    """fused_add_rms_norm with its output quantized per token (see rms_norm_quant); ``residual``
    is updated in place to x + residual, as there."""
    if not (x.dtype == residual.dtype and x.shape == residual.shape and residual.is_contiguous()):
        residual.copy_(x + residual)
        return _quantized_norm(residual, None, weight, eps, qdtype), residual
    return _quantized_norm(x, residual, weight, eps, qdtype), residual


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (dispatcher)."""
    if not use_triton(x) or x.numel() == 0:
        return rms_norm_ref(x, weight, eps)
    x2 = _as_rows(x)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    _launch(x2, None, weight.contiguous(), out.view(-1, x.shape[-1]), eps)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm (dispatcher); returns (normed, new_residual).

    ``residual`` is updated in place to x + residual and returned as new_residual (on every path),
    so that the sum is written once and buffers stay fixed for CUDA graphs.
    """
    same_dtype = x.dtype == residual.dtype and x.shape == residual.shape
    res2 = residual.view(-1, residual.shape[-1]) if residual.is_contiguous() else None
    if not use_triton(x) or not same_dtype or res2 is None or x.numel() == 0:
        normed, new_residual = fused_add_rms_norm_ref(x, residual, weight, eps)
        residual.copy_(new_residual)
        return normed, residual
    x2 = _as_rows(x)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    _launch(x2, res2, weight.contiguous(), out.view(-1, x.shape[-1]), eps)
    return out, residual
