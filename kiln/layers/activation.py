"""The gated MLP activation: SiLU(gate) * up on a fused gate/up projection."""

from __future__ import annotations

import torch
from torch import nn

from kiln.kernels.activation import silu_and_mul, silu_and_mul_quant


class SiluAndMul(nn.Module):
    """Takes [..., 2*I] = [gate | up] and returns silu(gate) * up [..., I].

    With ``quant_dtype`` set (float8_e4m3fn: the reader is an fp8 W8A8 down_proj), the output comes
    quantized per token, as a kernels.quant_act.QuantizedRows, from the same kernel.
    """

    def __init__(self):
        super().__init__()
        self.quant_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor):
        """Dispatches to the silu_and_mul kernel (or its quantizing variant)."""
        if self.quant_dtype is not None:
            return silu_and_mul_quant(x, self.quant_dtype)
        return silu_and_mul(x)
