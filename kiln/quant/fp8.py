"""FP8 W8A8: e4m3 weights with per-output-channel scales, activations quantized per token at run time."""

from __future__ import annotations

import torch
from torch import nn

from kiln.kernels import use_triton
from kiln.kernels.mma_direct import (MMA_DIRECT_MAX_M, mma_direct_enabled, mma_direct_gemv,
                                     mma_direct_ok, pack_mma_direct)
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
        """Dynamic per-token fp8 activations times the fp8 weight, rescaled (up to 8 rows through
        the tensor-core GEMV from registers when the layer holds its weights in that order too,
        ``layer.fp8_mma``, and KILN_MMA_DIRECT still names fp8: turning it off after loading
        brings the other kernels back, as benchmarks/ab_latency.py does)."""
        return self._product(layer, x)

    def apply_into(self, layer: Linear, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``apply`` into ``out``: the torch._scaled_mm path (more than SMALL_M rows) writes it
        directly when it can, the others copy."""
        return self._product(layer, x, out)

    @staticmethod
    def _product(layer: Linear, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        words = getattr(layer, "fp8_mma", None)
        if words is not None and x.device.type == "cuda" and mma_direct_enabled("fp8"):
            y = _mma_direct_fp8(layer, words, x)
            if y is not None:
                return y if out is None else out.copy_(y)
        return _ops.fp8_linear(x, layer.weight, layer.weight_scale, layer.bias, out=out)

    def finish_loading(self, layer: nn.Module) -> None:
        """With KILN_MMA_DIRECT naming fp8 at load, where the Triton kernels compute (CUDA): keep a
        second copy of the weight in the A-fragment order of kiln.kernels.mma_direct
        (``layer.fp8_mma``, +1 byte a weight) for decode rows. Engines on disk are unchanged."""
        layer.fp8_mma = None
        n, k = layer.out_features, layer.in_features
        if (use_triton(layer.weight) and layer.weight.is_cuda and mma_direct_enabled("fp8")
                and mma_direct_ok(n, k, torch.float8_e4m3fn)):
            layer.fp8_mma = pack_mma_direct(layer.weight.data)

    @staticmethod
    def quantize(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Processed tensors (all but bias) of a float weight [N, K]."""
        q, scales = quantize_fp8_weight(weight)
        return {"weight": q, "weight_scale": scales}


def _mma_direct_fp8(layer, words: torch.Tensor, x) -> torch.Tensor | None:
    """layer's product through mma_direct_gemv for at most MMA_DIRECT_MAX_M rows of x (a tensor,
    quantized per token here, or quant_act.QuantizedRows from its producer); None otherwise."""
    from kiln.kernels.quant_act import QuantizedRows, quant_per_token

    n, k = layer.out_features, layer.in_features
    if isinstance(x, QuantizedRows):
        if not 0 < x.m <= MMA_DIRECT_MAX_M or x.q.dtype != torch.float8_e4m3fn or x.shape[-1] != k:
            return None
        xq, sx = x.q[:x.m], x.scale[:x.m]
    else:
        if x.shape[-1] != k or not 0 < x.numel() <= MMA_DIRECT_MAX_M * k:
            return None
        xq, sx = quant_per_token(x.reshape(-1, k), torch.float8_e4m3fn)
    if xq.stride(-1) != 1 or xq.stride(0) % 4 or xq.data_ptr() % 4:
        xq = xq.clone(memory_format=torch.contiguous_format)  # read as 32-bit words
    out = mma_direct_gemv(xq, sx, words, layer.weight_scale, layer.bias, n, k, x.dtype)
    return out.reshape(*x.shape[:-1], n)
