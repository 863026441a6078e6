"""SiLU(gate) * up on a fused [.., 2*I] gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Reference: x = [gate | up] on the last dim; returns silu(gate) * up in x's dtype."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SiLU·mul (dispatcher)."""
    return silu_and_mul_ref(x)
