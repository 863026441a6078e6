"""RMSNorm and fused residual-add + RMSNorm."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start


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
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, x_row_stride, res_row_stride, out_row_stride,
                     hidden, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    # One program per row: the whole row sits in registers, so x (and the residual) are read once
    # and the sum is written back in the same pass.
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * res_row_stride + cols, mask=mask, other=0.0)
        # The add rounds to the input dtype, as `x + residual` does in torch.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_ptr + row * res_row_stride + cols, x, mask=mask)
    h = x.to(tl.float32)
    mean_sq = tl.sum(h * h, axis=0) / hidden
    normed = (h * tl.rsqrt(mean_sq + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out_ty = out_ptr.dtype.element_ty
    y = normed.to(tl.float32).to(out_ty).to(tl.float32) * w.to(out_ty).to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ty), mask=mask)


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
        HAS_RESIDUAL=res2 is not None, BLOCK=block, num_warps=num_warps, **pdl_args(x2))


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
