"""Shared plumbing of the quantized LinearMethods: parameter registration and whole-tensor loading."""

from __future__ import annotations

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.layers.linear import Linear, LinearMethod


def register(layer: Linear, name: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device | str) -> None:
    """Register an uninitialised, frozen parameter ``name`` on ``layer``."""
    setattr(layer, name, nn.Parameter(torch.empty(shape, dtype=dtype, device=device),
                                      requires_grad=False))


class QuantLinearMethod(LinearMethod):
    """Base of the quantized methods: they load processed tensors from an engine directory only.

    A Hugging Face checkpoint holds float weights, which these layers cannot take as they are:
    ``kiln build`` turns them into an engine directory whose tensors match the layer's parameters.
    """

    #: Name of the scheme (as in ``kiln build --quant``), for messages.
    scheme = "quantized"
    #: Whether the layer keeps a per-input-channel ``input_scale`` applied at run time (a scale
    #: that AWQ or SmoothQuant could not fold into a preceding op).
    has_input_scale = False

    def register_input_scale(self, layer: Linear, dtype: torch.dtype,
                             device: torch.device | str) -> None:
        """Register ``input_scale`` [in] when the layer keeps one, else None."""
        if self.has_input_scale:
            register(layer, "input_scale", (layer.in_features,), dtype, device)
        else:
            layer.register_parameter("input_scale", None)

    @staticmethod
    def scale_input(layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """``x * input_scale`` when the layer has one, else ``x``."""
        return x if layer.input_scale is None else x * layer.input_scale

    def register_bias(self, layer: Linear, dtype: torch.dtype, device: torch.device | str) -> None:
        """Register ``bias`` [out] in the model dtype when the layer has one, else None."""
        if layer.has_bias:
            register(layer, "bias", (layer.out_features,), dtype, device)
        else:
            layer.register_parameter("bias", None)

    def load_shard(self, layer: Linear, param_name: str, tensor: torch.Tensor,
                   shard: int | None, checkpoint_name: str) -> None:
        """Copy a whole processed tensor (exact shape and dtype) into ``param_name``."""
        param = getattr(layer, param_name, None)
        if shard is not None or not isinstance(param, torch.Tensor):
            raise KilnError(f"tensor {checkpoint_name} cannot be loaded into a {self.scheme} layer; "
                            "quantized layers load from an engine directory made by `kiln build`")
        if tuple(tensor.shape) != tuple(param.shape) or tensor.dtype != param.dtype:
            raise KilnError(f"engine tensor {checkpoint_name} is {tensor.dtype} "
                            f"{tuple(tensor.shape)}, expected {param.dtype} {tuple(param.shape)}; "
                            "the engine directory is damaged or from another kiln version")
        param.data.copy_(tensor)
