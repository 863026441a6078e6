"""Activation-aware weight quantization (AWQ) for int4: search per-input-channel scales.

Channels that carry large activations matter more to the output, so their weights are scaled up
before rounding (smaller relative error) and the input is scaled down by the same factor. The
scales are s = mean|X_j|^a for a grid of a in [0, 1], normalised so that max(s) * min(s) = 1, and
the a with the smallest output error on the calibration activations wins (a = 0 is plain RTN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.quant.int4 import fake_quantize_int4


@dataclass(frozen=True)
class AwqResult:
    """Chosen scales s [K] (float32; weights are multiplied by s, inputs divided), and the search."""

    scales: torch.Tensor
    alpha: float
    error: float
    rtn_error: float


def output_error(weight: torch.Tensor, inputs: torch.Tensor, scales: torch.Tensor | None,
                 group_size: int) -> float:
    """Mean squared output error of int4 RTN of ``weight * scales`` on ``inputs / scales``."""
    w = weight.float()
    x = inputs.float()
    ws = w if scales is None else w * scales[None, :]
    deq = fake_quantize_int4(ws, group_size)
    if scales is not None:
        deq = deq / scales[None, :]
    return float(((x @ (deq - w).T) ** 2).mean())


def awq_search(weight: torch.Tensor, inputs: torch.Tensor, act_absmean: torch.Tensor,
               group_size: int = 128, grid_points: int = 20) -> AwqResult:
    """Search a in {0, 1/n, ..., (n-1)/n} for s = act_absmean^a (weight [N, K], inputs [R, K])."""
    mean = act_absmean.float().clamp_min(1e-6)
    best: tuple[float, float, torch.Tensor] | None = None
    rtn = output_error(weight, inputs, None, group_size)
    for i in range(grid_points):
        alpha = i / grid_points
        s = mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = rtn if i == 0 else output_error(weight, inputs, s, group_size)
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return AwqResult(scales=best[2], alpha=best[1], error=best[0], rtn_error=rtn)
