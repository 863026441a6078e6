"""RMSNorm layer over the last dimension, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from kiln.kernels.rmsnorm import fused_add_rms_norm, rms_norm


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; ``forward(x, residual)`` also adds the residual first."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without residual: rms_norm(x). With it: (rms_norm(x + residual), x + residual)."""
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
