"""INT8 weight-only quantization: symmetric per-output-channel scales, activations stay in float."""

from __future__ import annotations

import torch

from kiln.layers.linear import Linear
from kiln.quant import _ops
from kiln.quant.base import QuantLinearMethod, register


def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float weight -> (int8 [N, K], float32 scales [N]) with w ~= q * scale[:, None].

    Symmetric with the range [-127, 127] (dropping -128 keeps the grid symmetric around zero).
    """
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 weight an int8 per-channel layer computes with."""
    return qweight.float() * scales[:, None]


class Int8WeightOnlyLinearMethod(QuantLinearMethod):
    """``qweight`` int8 [N, K], ``scales`` float32 [N], optional ``bias``; x is not quantized."""

    scheme = "int8-wo"

    def create_weights(self, layer: Linear, dtype: torch.dtype, device: torch.device | str) -> None:
        """Register qweight, scales and bias."""
        register(layer, "qweight", (layer.out_features, layer.in_features), torch.int8, device)
        register(layer, "scales", (layer.out_features,), torch.float32, device)
        self.register_bias(layer, dtype, device)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """x @ dequant(qweight).T + bias through the int8 weight-only kernel."""
        return _ops.int8_wo_linear(x, layer.qweight, layer.scales, layer.bias)

    @staticmethod
    def quantize(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Processed tensors (all but bias) of a float weight [N, K]."""
        q, scales = quantize_int8_per_channel(weight)
        return {"qweight": q, "scales": scales}
