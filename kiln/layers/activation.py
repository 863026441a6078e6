"""The gated MLP activation: SiLU(gate) * up on a fused gate/up projection."""

from __future__ import annotations

import torch
from torch import nn

from kiln.kernels.activation import silu_and_mul


class SiluAndMul(nn.Module):
    """Takes [..., 2*I] = [gate | up] and returns silu(gate) * up [..., I]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dispatches to the silu_and_mul kernel."""
        return silu_and_mul(x)
