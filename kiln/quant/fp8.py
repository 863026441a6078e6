"""FP8 W8A8: e4m3 weights with per-output-channel scales, activations quantized per token at run time."""

from __future__ import annotations

import torch

from kiln.layers.linear import Linear
from kiln.quant import _ops
from kiln.quant.base import QuantLinearMethod, register

FP8_MAX = 448.0  # largest finite float8_e4m3fn value


def quantize_fp8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float weight -> (float8_e4m3fn [N, K], float32 scales [N]); w ~= q * scale[:, None]."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp_min(1e-12) / FP8_MAX
    q = (w / scales[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scales


class Fp8LinearMethod(QuantLinearMethod):
    """``weight`` float8_e4m3fn [N, K], ``weight_scale`` float32 [N], optional ``bias``.

    Needs an FP8 tensor-core GPU (compute capability 8.9+) to be fast; the torch reference computes
    the same numbers anywhere, which the build uses for its accuracy report.
    """

    scheme = "fp8"

    def create_weights(self, layer: Linear, dtype: torch.dtype, device: torch.device | str) -> None:
        """Register weight (fp8), weight_scale and bias."""
        register(layer, "weight", (layer.out_features, layer.in_features), torch.float8_e4m3fn,
                 device)
        register(layer, "weight_scale", (layer.out_features,), torch.float32, device)
        self.register_bias(layer, dtype, device)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """Dynamic per-token fp8 activations times the fp8 weight, rescaled."""
        return _ops.fp8_linear(x, layer.weight, layer.weight_scale, layer.bias)

    @staticmethod
    def quantize(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Processed tensors (all but bias) of a float weight [N, K]."""
        q, scales = quantize_fp8_weight(weight)
        return {"weight": q, "weight_scale": scales}
