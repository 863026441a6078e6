"""Linear layers whose matmul is delegated to a ``LinearMethod`` (the hook for quantization).

A layer may be the fusion of several checkpoint projections (q/k/v, gate/up): it then knows the
output size of each shard, so the loader can copy each checkpoint tensor into its rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.errors import KilnError


class LinearMethod:
    """How a linear layer stores its weights and computes ``x @ W.T + b``.

    A quantization scheme subclasses this: it registers its own parameters (packed weights, scales)
    in ``create_weights``, computes in ``apply`` and copies checkpoint tensors in ``load_shard``.
    """

    def create_weights(self, layer: "Linear", dtype: torch.dtype, device: torch.device | str) -> None:
        """Register the layer's parameters (uninitialised: the loader or a test fills them)."""
        raise NotImplementedError

    def apply(self, layer: "Linear", x: torch.Tensor) -> torch.Tensor:
        """The layer's output for input rows ``x`` [..., in_features]."""
        raise NotImplementedError

    def apply_into(self, layer: "Linear", x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``apply`` with its result in ``out`` (x's rows by out_features, x's dtype), returned. A
        method whose kernel can write a given tensor overrides this to skip the copy (an fp8 LM
        head into the decode graphs' logits buffer)."""
        return out.copy_(self.apply(layer, x))

    def load_shard(self, layer: "Linear", param_name: str, tensor: torch.Tensor,
                   shard: int | None, checkpoint_name: str) -> None:
        """Copy one checkpoint tensor into the layer (into shard ``shard``'s rows when fused)."""
        raise NotImplementedError

    def finish_loading(self, layer: nn.Module) -> None:
        """Called once every tensor of the model is loaded (kiln.models.loader.load_weights): a
        method may rearrange its tensors for the kernels of the device they are on here."""


class UnquantizedLinearMethod(LinearMethod):
    """Plain weight [out, in] (and bias [out]) in the model dtype."""

    def create_weights(self, layer: "Linear", dtype: torch.dtype, device: torch.device | str) -> None:
        """Register ``weight`` and, when the layer has one, ``bias``."""
        layer.weight = nn.Parameter(
            torch.empty(layer.out_features, layer.in_features, dtype=dtype, device=device),
            requires_grad=False)
        if layer.has_bias:
            layer.bias = nn.Parameter(torch.empty(layer.out_features, dtype=dtype, device=device),
                                      requires_grad=False)
        else:
            layer.register_parameter("bias", None)

    def apply(self, layer: "Linear", x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` with the stored weight and bias (decode rows through the Triton GEMV when
        KILN_TRITON_GEMV=1, or the tensor-core GEMV when KILN_TC_GEMV names float; up to 8 rows
        through the one from registers when the layer holds its weight in that order too,
        ``layer.mma_direct``, and KILN_MMA_DIRECT still names float)."""
        if x.is_cuda:
            from kiln.kernels import quant_matmul as qm
            from kiln.kernels import mma_direct, mma_gemv

            rows = x.numel() // x.shape[-1]
            words = getattr(layer, "mma_direct", None)
            if (words is not None and 0 < rows <= mma_direct.MMA_DIRECT_MAX_M
                    and x.dtype == layer.weight.dtype and mma_direct.mma_direct_enabled("float")):
                return mma_direct.linear(x, words, layer.bias, layer.out_features)
            if ((rows <= qm.GEMV_MAX_M and qm.triton_gemv_enabled())
                    or (rows <= qm.SMALL_M and mma_gemv.tc_gemv_enabled("float")
                        and x.dtype == layer.weight.dtype and x.shape[-1] % 32 == 0)):
                return qm.float_gemv_linear(x, layer.weight, layer.bias)
        return F.linear(x, layer.weight, layer.bias)

    def finish_loading(self, layer: nn.Module) -> None:
        """With KILN_MMA_DIRECT naming float at load, a bfloat16 weight on CUDA keeps a second copy
        in the A-fragment order of kiln.kernels.mma_direct (``layer.mma_direct``, +2 bytes a
        weight) for decode rows."""
        from kiln.kernels import mma_direct

        layer.mma_direct = mma_direct.pack_if_enabled(layer.weight.data)

    def load_shard(self, layer: "Linear", param_name: str, tensor: torch.Tensor,
                   shard: int | None, checkpoint_name: str) -> None:
        """Check the shape (naming the checkpoint tensor on mismatch), then copy."""
        param = getattr(layer, param_name, None)
        if param is None:
            raise KilnError(f"checkpoint tensor {checkpoint_name} has no place in the model "
                            f"(the layer has no {param_name}); check the config matches the weights")
        target = param.data
        if shard is not None:
            start = sum(layer.output_sizes[:shard])
            target = target.narrow(0, start, layer.output_sizes[shard])
        if tuple(tensor.shape) != tuple(target.shape):
            raise KilnError(f"weight {checkpoint_name} has shape {tuple(tensor.shape)}, expected "
                            f"{tuple(target.shape)} from config.json; the config and the weights "
                            "do not belong together")
        target.copy_(tensor)


class Linear(nn.Module):
    """``y = x @ W.T (+ b)``; with several ``output_sizes`` it is a fusion of that many projections."""

    def __init__(self, in_features: int, output_sizes: int | tuple[int, ...], bias: bool,
                 dtype: torch.dtype, device: torch.device | str,
                 method: LinearMethod | None = None):
        super().__init__()
        sizes = (output_sizes,) if isinstance(output_sizes, int) else tuple(output_sizes)
        self.in_features = in_features
        self.output_sizes = sizes
        self.out_features = sum(sizes)
        self.has_bias = bias
        self.method = method or UnquantizedLinearMethod()
        self.method.create_weights(self, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer's linear method."""
        return self.method.apply(self, x)

    def set_method(self, method: LinearMethod, dtype: torch.dtype,
                   device: torch.device | str) -> None:
        """Replace the linear method, dropping the old method's parameters and creating the new ones.

        Used to give a layer a quantized method right after construction (before any weights load).
        """
        for name, _ in list(self.named_parameters(recurse=False)):
            delattr(self, name)
        self.method = method
        method.create_weights(self, dtype, device)

    def load_shard(self, param_name: str, tensor: torch.Tensor, shard: int | None,
                   checkpoint_name: str) -> None:
        """Copy a checkpoint tensor (``weight`` or ``bias``, whole or one shard) into this layer."""
        self.method.load_shard(self, param_name, tensor, shard, checkpoint_name)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.output_sizes}, bias={self.has_bias}"
