"""Torch references of the quantized linear layers: dequantize and multiply in float32, on any
device. The Triton kernels (fma_gemv, quant_gemm, mma_gemv) are tested against these, and the
dispatchers in quant_matmul run them where Triton does not (the CPU). Layouts: quant_matmul."""

from __future__ import annotations

import torch


def dequantize_int4_ref(qweight: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Packed int4 [N, K // 2] + scales [N, K // group_size] -> float32 weights [N, K]."""
    q = torch.stack([(qweight & 15).to(torch.int16) - 8, (qweight >> 4).to(torch.int16) - 8], dim=-1)
    q = q.reshape(qweight.shape[0], -1).float()
    return q * scales.float().repeat_interleave(group_size, dim=1)


def _finish_ref(y: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Add the bias in float32, cast to x's dtype and restore x's leading shape."""
    if bias is not None:
        y = y + bias.float()
    return y.to(like.dtype).reshape(*like.shape[:-1], y.shape[-1])


def int4_wo_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference int4 weight-only linear: dequantize to float32 and multiply."""
    w = dequantize_int4_ref(qweight, scales, group_size)
    return _finish_ref(x.reshape(-1, x.shape[-1]).float() @ w.T, bias, x)


def int8_wo_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference int8 weight-only linear (per-channel scales), float32."""
    w = qweight.float() * scales.float()[:, None]
    return _finish_ref(x.reshape(-1, x.shape[-1]).float() @ w.T, bias, x)


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference fp8 W8A8 linear: per-token fp8 activations, float32 product of the fp8 values."""
    from kiln.kernels.quant_act import quant_per_token_ref
    xq, sx = quant_per_token_ref(x.reshape(-1, x.shape[-1]), torch.float8_e4m3fn)
    return _finish_ref(_fp8_product_ref(xq, sx, weight, weight_scale), bias, x)


def _fp8_product_ref(xq: torch.Tensor, sx: torch.Tensor, weight: torch.Tensor,
                     weight_scale: torch.Tensor) -> torch.Tensor:
    """float32 product of per-token fp8 codes xq [M, K] (scales sx [M, 1]) and fp8 weights."""
    return (xq.float() @ weight.float().T) * sx * weight_scale.float()[None, :]


def int8_sq_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference int8 W8A8 linear: per-token int8 activations, exact integer product, then scales."""
    from kiln.kernels.quant_act import quant_per_token_ref
    xq, sx = quant_per_token_ref(x.reshape(-1, x.shape[-1]), torch.int8)
    # float64 holds the int32 dot products exactly (|sum| < 2**53) on every device.
    acc = xq.double() @ weight.double().T
    y = acc.float() * sx * weight_scale.float()[None, :]
    return _finish_ref(y, bias, x)
