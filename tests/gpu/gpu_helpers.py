"""Helpers shared by the GPU tests."""

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN in out gives NaN, which fails any bound)."""
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def randn(*shape, gen, dtype=torch.float32, scale=1.0):
    """Normal noise on CUDA from ``gen``, times ``scale``, in ``dtype``."""
    return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(dtype)
