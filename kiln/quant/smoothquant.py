"""INT8 SmoothQuant W8A8: per-input-channel smoothing moves activation outliers into the weights.

With s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha), the layer computes (X / s) @ (W * s).T, which
equals X @ W.T in exact arithmetic while (X / s) has flatter channels, so per-token int8
activations lose less. The 1 / s is folded into the preceding op (an RMSNorm weight, or the up
rows of gate_up for down_proj) by kiln.quant.model_quant; a layer with no such op either keeps
``input_scale`` at run time or is not smoothed. Weights: int8 per output channel; activations:
int8 per token, computed at run time.
"""

from __future__ import annotations

import torch

from kiln.layers.linear import Linear
from kiln.quant import _ops
from kiln.quant.base import QuantLinearMethod, register
from kiln.quant.int8 import quantize_int8_per_channel


def smoothing_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5
                     ) -> torch.Tensor:
    """Per-input-channel s [K] (float32) from activation maxima [K] and the weight [N, K]."""
    a = act_absmax.float().clamp_min(1e-5)
    w = weight.float().abs().amax(dim=0).clamp_min(1e-5)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    return s.clamp_min(1e-5)


class Int8SmoothQuantLinearMethod(QuantLinearMethod):
    """``weight`` int8 [N, K], ``weight_scale`` float32 [N], optional ``input_scale`` [K], ``bias``."""

    scheme = "int8-sq"

    def __init__(self, has_input_scale: bool = False):
        self.has_input_scale = has_input_scale

    def create_weights(self, layer: Linear, dtype: torch.dtype, device: torch.device | str) -> None:
        """Register weight (int8), weight_scale, input_scale (when kept at run time) and bias."""
        register(layer, "weight", (layer.out_features, layer.in_features), torch.int8, device)
        register(layer, "weight_scale", (layer.out_features,), torch.float32, device)
        self.register_input_scale(layer, dtype, device)
        self.register_bias(layer, dtype, device)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """Per-token int8 activations (after input_scale) times the int8 weight, rescaled."""
        return _ops.int8_sq_linear(self.scale_input(layer, x), layer.weight, layer.weight_scale,
                                   layer.bias)

    @staticmethod
    def quantize(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Processed tensors (all but bias / input_scale) of an (already smoothed) weight [N, K]."""
        q, scales = quantize_int8_per_channel(weight)
        return {"weight": q, "weight_scale": scales}
