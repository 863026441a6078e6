"""INT4 weight-only quantization: symmetric group-wise scales (group 128), two values per byte.

Layout (notes/quant_interface.md): qweight uint8 [N, K // 2], byte j of row n holds k = 2j in the
low nibble and k = 2j + 1 in the high nibble, each as q + 8 with q in [-8, 7]; scales float32
[N, K // group_size]; w[n, k] = q[n, k] * scales[n, k // group_size]. An optional ``input_scale``
[K] (activation-aware scaling that could not be folded into a preceding op) multiplies x first.
That is the engine's layout on disk; a loaded layer on the Triton path holds qweight in blocks of
16 rows instead (``finish_loading``; ``layer.int4_row_block``; KILN_INT4_ROW_BLOCK=0 keeps it
row-major), and with KILN_INT4_MMA=1 a second copy in the tensor-core GEMV's order
(``layer.int4_mma``, kiln.kernels.mma_int4) that decode rows (up to 8) take.
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.kernels import use_triton
from kiln.kernels.mma_int4 import (MMA_INT4_MAX_M, int4_mma_enabled, int4_mma_gemv, int4_mma_ok,
                                   pack_int4_mma)
from kiln.layers.linear import Linear
from kiln.quant import _ops
from kiln.quant.base import QuantLinearMethod, register

GROUP_SIZES = (32, 64, 128)
# Shrink factors of each group's max tried by the clipping search (1.0 = no clipping).
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int [N, K] values in [-8, 7] (K even) -> uint8 [N, K // 2], even k in the low nibble."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K // 2] -> int8 [N, K] values in [-8, 7] (inverse of pack_int4)."""
    low = (packed & 0xF).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


def _check_group(in_features: int, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise KilnError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise KilnError(f"int4 needs in_features divisible by the group size: {in_features} % "
                        f"{group_size} != 0; pick a smaller --group-size or --quant int8-wo")


def _quantize_groups(weight: torch.Tensor, group_size: int, clip: torch.Tensor | float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (int8 q [N, K] in [-8, 7], float32 scales [N, K // group_size])."""
    n, k = weight.shape
    w = weight.float().reshape(n, k // group_size, group_size)
    amax = w.abs().amax(dim=-1)
    if isinstance(clip, torch.Tensor):
        amax = amax * clip
    else:
        amax = amax * float(clip)
    scales = amax.clamp_min(1e-12) / 7.0
    q = torch.round(w / scales[..., None]).clamp(-8, 7).to(torch.int8)
    return q.reshape(n, k), scales


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float32 weight [N, K] an int4 layer computes with."""
    return unpack_int4(packed).float() * scales.repeat_interleave(group_size, dim=1)


def fake_quantize_int4(weight: torch.Tensor, group_size: int,
                       clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """float32 [N, K]: the weight after int4 group-wise rounding (no packing; for searches)."""
    _check_group(weight.shape[1], group_size)
    q, scales = _quantize_groups(weight, group_size, clip)
    return (q.float().reshape(scales.shape[0], scales.shape[1], group_size)
            * scales[..., None]).reshape(weight.shape)


def search_clip(weight: torch.Tensor, inputs: torch.Tensor, group_size: int,
                grid: tuple[float, ...] = CLIP_GRID) -> torch.Tensor:
    """Per-(row, group) clip ratio from ``grid`` minimizing the output error on ``inputs`` [R, K].

    The error of group g of row n is ||X_g (w_g - deq(w_g))||^2 = d^T (X_g^T X_g) d, so one
    [g, g] Gram matrix per group serves every row and ratio.
    """
    n, k = weight.shape
    groups = k // group_size
    x = inputs.float().reshape(-1, groups, group_size)
    gram = torch.einsum("rgi,rgj->gij", x, x)
    w = weight.float().reshape(n, groups, group_size)
    best_err = torch.full((n, groups), float("inf"), device=weight.device)
    best = torch.ones(n, groups, device=weight.device)
    for ratio in grid:
        q, scales = _quantize_groups(weight, group_size, ratio)
        d = q.float().reshape(n, groups, group_size) * scales[..., None] - w
        err = torch.einsum("ngi,gij,ngj->ng", d, gram, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best


def quantize_int4_groupwise(weight: torch.Tensor, group_size: int = 128,
                            clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float weight -> (packed uint8 [N, K // 2], float32 scales [N, K // group_size]).

    ``clip`` shrinks each group's range (a float, or [N, K // group_size] from ``search_clip``).
    """
    _check_group(weight.shape[1], group_size)
    q, scales = _quantize_groups(weight, group_size, clip)
    return pack_int4(q), scales


class Int4WeightOnlyLinearMethod(QuantLinearMethod):
    """``qweight`` uint8 [N, K/2], ``scales`` float32 [N, K/g], optional ``input_scale`` [K], ``bias``."""

    scheme = "int4-wo"

    def __init__(self, group_size: int = 128, has_input_scale: bool = False):
        self.group_size = group_size
        self.has_input_scale = has_input_scale

    def create_weights(self, layer: Linear, dtype: torch.dtype, device: torch.device | str) -> None:
        """Register qweight, scales, input_scale (when kept at run time) and bias."""
        _check_group(layer.in_features, self.group_size)
        n, k = layer.out_features, layer.in_features
        register(layer, "qweight", (n, k // 2), torch.uint8, device)
        register(layer, "scales", (n, k // self.group_size), torch.float32, device)
        self.register_input_scale(layer, dtype, device)
        self.register_bias(layer, dtype, device)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """(x * input_scale) @ dequant(qweight).T + bias through the int4 weight-only kernel
        (the tensor-core one from registers for up to 8 bfloat16 rows when the layer holds its
        weights in that order too, ``layer.int4_mma``, and KILN_INT4_MMA is still on: turning it
        off after loading brings the other kernels back, as benchmarks/ab_latency.py does)."""
        x = self.scale_input(layer, x)
        packed = getattr(layer, "int4_mma", None)
        if (packed is not None and int4_mma_enabled() and x.dtype == torch.bfloat16 and x.is_cuda
                and 0 < x.numel() <= MMA_INT4_MAX_M * x.shape[-1]):
            x2 = x.reshape(-1, x.shape[-1])
            if x2.stride(-1) != 1 or x2.stride(0) % 2 or x2.data_ptr() % 4:
                x2 = x2.clone(memory_format=torch.contiguous_format)  # read as 32-bit words
            out = int4_mma_gemv(x2, *packed, layer.bias, layer.out_features, layer.in_features)
            return out.reshape(*x.shape[:-1], layer.out_features)
        return _ops.int4_wo_linear(x, layer.qweight, layer.scales, self.group_size, layer.bias,
                                   row_block=getattr(layer, "int4_row_block", 1))

    def finish_loading(self, layer: nn.Module) -> None:
        """Where the Triton kernels compute (CUDA), store qweight in blocks of rows for the GEMV
        (int4_row_block: 16 unless KILN_INT4_ROW_BLOCK says otherwise; tile_int4_rows; same
        shape, in place) and remember the block in ``layer.int4_row_block``. The loader has just written
        every tensor row-major (a load that misses one fails), so this always starts from
        row-major weights. Engines on disk stay row-major."""
        block = 1
        layer.int4_mma = None
        if use_triton(layer.qweight):
            block = _ops.int4_row_block(layer.qweight.shape[0], self.group_size)
            n, k = layer.out_features, layer.in_features
            if int4_mma_enabled() and int4_mma_ok(n, k, self.group_size):
                # a second copy in the A-fragment order for decode rows (KILN_INT4_MMA=1)
                layer.int4_mma = pack_int4_mma(layer.qweight.data, layer.scales.data)
        if block > 1:
            layer.qweight.data.copy_(_ops.tile_int4_rows(layer.qweight.data, block, self.group_size))
        layer.int4_row_block = block

    def quantize(self, weight: torch.Tensor, clip: torch.Tensor | float = 1.0
                 ) -> dict[str, torch.Tensor]:
        """Processed qweight and scales (not bias / input_scale) of a float weight [N, K]."""
        packed, scales = quantize_int4_groupwise(weight, self.group_size, clip)
        return {"qweight": packed, "scales": scales}
