"""RMSNorm layer over the last dimension, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from kiln.kernels.dataflow import FlagSlot
from kiln.kernels.qmm_common import SMALL_M
from kiln.kernels.rmsnorm import (flowing_add_rms_norm, flowing_norm_ok, fused_add_rms_norm,
                                  fused_add_rms_norm_quant, rms_norm, rms_norm_quant)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; ``forward(x, residual)`` also adds the residual first.

    With ``quant_dtype`` set (float8_e4m3fn: the only reader of the output is an fp8 W8A8 linear),
    the output comes quantized per token, as a kernels.rmsnorm.QuantizedRows, from the same kernel.
    """

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)
        self.quant_dtype: torch.dtype | None = None
        # The output rows of the row-granular path (see forward's wait), allocated on first use
        # outside a graph capture; not a parameter or buffer of the module.
        self._flow_out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                wait: FlagSlot | None = None, signal: FlagSlot | None = None):
        """Without residual: rms_norm(x). With it: (rms_norm(x + residual), x + residual).

        Row-granular dependencies (kiln.kernels.dataflow; with a residual, unquantized output,
        decode rows): ``wait``, a GEMV's slot, armed in this forward: x is read as the GEMV marks
        it ready, into this module's own output rows (reused every step); ``signal`` (granule
        hidden, row stride 1): each output row is marked ready for the GEMV after it, and the
        slot armed. The same bits either way."""
        if (residual is not None and self.quant_dtype is None
                and ((wait is not None and wait.armed) or signal is not None)):
            flowed = self._flowing(x, residual, wait, signal)
            if flowed is not None:
                return flowed
        if self.quant_dtype is not None:
            if residual is None:
                return rms_norm_quant(x, self.weight, self.eps, self.quant_dtype)
            return fused_add_rms_norm_quant(x, residual, self.weight, self.eps, self.quant_dtype)
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)

    def _flowing(self, x: torch.Tensor, residual: torch.Tensor, wait: FlagSlot | None,
                 signal: FlagSlot | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """forward's row-granular path, or None where it does not apply."""
        waits = wait is not None and wait.armed
        out = self._flow_rows(x) if waits else None
        if out is None:  # no own rows (a capture before any): no wait; a fresh output may signal
            waits = False
            out = torch.empty_like(x)
        if not (waits or signal is not None) or not flowing_norm_ok(x, residual, self.weight, out):
            return None
        return flowing_add_rms_norm(x, residual, self.weight, self.eps, out,
                                    wait if waits else None,
                                    signal.arm() if signal is not None else None)

    def _flow_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """This module's own output rows for x's shape (at most SMALL_M rows), or None."""
        rows = x.numel() // x.shape[-1]
        buf = self._flow_out
        if rows > SMALL_M:
            return None
        if buf is None or buf.device != x.device or buf.dtype != x.dtype:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                return None
            buf = self._flow_out = torch.empty(SMALL_M, x.shape[-1], dtype=x.dtype,
                                               device=x.device)
        return buf[:rows].view(x.shape)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
