"""RMSNorm layer over the last dimension, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from kiln.kernels.rmsnorm import (fused_add_rms_norm, fused_add_rms_norm_quant, rms_norm,
                                  rms_norm_quant)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; ``forward(x, residual)`` also adds the residual first.

    With ``quant_dtype`` set (float8_e4m3fn: the only reader of the output is an fp8 W8A8 linear),
    the output comes quantized per token, as a kernels.rmsnorm.QuantizedRows, from the same kernel.
    """

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)
        self.quant_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Without residual: rms_norm(x). With it: (rms_norm(x + residual), x + residual)."""
        if self.quant_dtype is not None:
            if residual is None:
                return rms_norm_quant(x, self.weight, self.eps, self.quant_dtype)
            return fused_add_rms_norm_quant(x, residual, self.weight, self.eps, self.quant_dtype)
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
