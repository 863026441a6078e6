"""Per-token dynamic activation quantization (fp8 e4m3 and int8) for the W8A8 linear layers.

For each row x of [M, K]: s = max(amax(|x|), 1e-12) / QMAX and x_q = cast(x * (1 / s)) with
QMAX = 448 (fp8 e4m3, round to nearest even, saturating) or 127 (int8, round half to even,
clamped to [-127, 127]). The scales are float32 [M, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start

FP8_MAX = 448.0
INT8_MAX = 127.0
SCALE_FLOOR = 1e-12
# 1.5 * 2**23: adding and subtracting it rounds a float32 of magnitude < 2**22 to the nearest
# integer, ties to even (the FPU's own rounding), with no conversion instruction.
_ROUND_MAGIC = 12582912.0


@dataclass(frozen=True)
class QuantizedRows:
    """Activations already quantized per token, for a W8A8 linear: codes ``q`` [R, K] and float32
    ``scale`` [R, 1] of the first ``m`` rows (R >= m: rows past m are padding, zero codes with
    scale 1), standing for a tensor of ``shape`` and ``dtype`` that was never materialized."""

    q: torch.Tensor
    scale: torch.Tensor
    m: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device


def producer_quant_enabled() -> bool:
    """Whether fp8 engines let the producers of their linears' inputs (the RMSNorms before qkv and
    gate_up, SiLU-mul before down) quantize them per token in their own kernels
    (KILN_PRODUCER_QUANT=1, the default; 0 turns it off). On the H200, 8B fp8 batch-1 decode
    with the tensor-core GEMV: 298.3 -> 318.3 tok/s (benchmarks/h200-quant/README.md, run-g)."""
    return os.environ.get("KILN_PRODUCER_QUANT", "1") == "1"


def quant_per_token_ref(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: x [M, K] -> (x_q [M, K] of `dtype` (float8_e4m3fn or int8), scales [M, 1] float32)."""
    xf = x.float()
    qmax = FP8_MAX if dtype == torch.float8_e4m3fn else INT8_MAX
    # A 0-dim device tensor as divisor: CUDA torch turns division by a Python scalar into a
    # multiplication by its reciprocal, which can differ from the kernel's IEEE division by an ulp.
    divisor = torch.full((), qmax, dtype=torch.float32, device=x.device)
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(SCALE_FLOOR) / divisor
    # Codes are x times the correctly rounded reciprocal of the scale (one division per row),
    # as the kernels compute them: a division per element costs them a branchy IEEE sequence.
    y = xf * (torch.ones((), dtype=torch.float32, device=x.device) / scale)
    if dtype == torch.float8_e4m3fn:
        q = y.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    elif dtype == torch.int8:
        q = torch.round(y).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        raise ValueError(f"unsupported activation quantization dtype {dtype}")
    return q, scale


@triton.jit
def token_scale(x_row, K, valid, IS_INT8: tl.constexpr, BLOCK: tl.constexpr):
    """The per-token scale of the row at x_row (K elements; `valid` false reads none): one pass
    for the amax. Shared with the W8A8 GEMV that quantizes its own activations."""
    amax = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=(offs < K) & valid, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    qmax = 127.0 if IS_INT8 else 448.0
    # IEEE division (Triton's `/` is approximate) so scales and rounding match the reference.
    return tl.div_rn(tl.maximum(tl.max(amax, axis=0), 1e-12), qmax)


@triton.jit
def quantize_to_codes(x, scale, IS_INT8: tl.constexpr):
    """float32 x -> int8 or fp8 e4m3 codes of x * (1 / scale) (saturating; ties to even; the
    reciprocal of the scalar scale correctly rounded)."""
    qmax = 127.0 if IS_INT8 else 448.0
    y = tl.minimum(tl.maximum(x * tl.div_rn(1.0, scale), -qmax), qmax)
    if IS_INT8:
        return ((y + 12582912.0) - 12582912.0).to(tl.int8)
    else:
        return y.to(tl.float8e4nv)


@triton.jit
def store_row_quantized(y, q_ptr, s_ptr, row, cols, mask, q_row_stride, IS_INT8: tl.constexpr):
    """Quantize one row held whole in registers (float32 y over `cols`) per token and store its
    codes and scale: the bits _quant_per_token_kernel gives for the same values."""
    qmax = 127.0 if IS_INT8 else 448.0
    scale = tl.div_rn(tl.maximum(tl.max(tl.abs(y), axis=0), 1e-12), qmax)
    tl.store(s_ptr + row, scale)
    tl.store(q_ptr + row * q_row_stride + cols, quantize_to_codes(y, scale, IS_INT8), mask=mask)


@triton.jit
def store_padding_row(q_ptr, s_ptr, row, cols, mask, q_row_stride, BLOCK: tl.constexpr):
    """A padding row of quantized activations: zero codes, scale 1 (as quant_per_token pads)."""
    zeros = tl.zeros([BLOCK], tl.float32).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + row * q_row_stride + cols, zeros, mask=mask)
    tl.store(s_ptr + row, 1.0)


# Above this many rows, producers pad their quantized output to a multiple of 16 rows (what
# torch._scaled_mm takes; kiln.kernels.qmm_common.SMALL_M, up to which the Triton kernels
# read exactly m rows).
QUANT_PAD_ABOVE = 16


def quantized_rows_buffers(m: int, k: int, dtype: torch.dtype,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (codes [R, k], float32 scales [R, 1]) for m rows, R padded as above."""
    pad = 16 if m > QUANT_PAD_ABOVE else 1
    rows = -(-m // pad) * pad
    return (torch.empty(rows, k, dtype=dtype, device=device),
            torch.empty(rows, 1, dtype=torch.float32, device=device))


def quantize_rows(y: torch.Tensor, dtype: torch.dtype, lead_shape: tuple[int, ...]
                       ) -> QuantizedRows:
    """A producer's float output y [..., K] quantized per token by quant_per_token (a separate
    launch), padded like quantized_rows_buffers: the producers' fallback and reference."""
    m, k = y.numel() // y.shape[-1], y.shape[-1]
    q, s = quant_per_token(y.reshape(m, k), dtype,
                           pad_rows_to=16 if m > QUANT_PAD_ABOVE else 1)
    return QuantizedRows(q, s, m, tuple(lead_shape), y.dtype)


@triton.jit
def _quant_per_token_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
                            IS_INT8: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    # One program per row: a first pass finds the amax, a second (from L1/L2) scales and casts.
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    scale = token_scale(x_row, K, True, IS_INT8, BLOCK)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        mask = offs < K
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(q_ptr + row * stride_qm + offs, quantize_to_codes(x, scale, IS_INT8), mask=mask)


def quant_per_token(x: torch.Tensor, dtype: torch.dtype,
                    pad_rows_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token quantization of x [M, K] (dispatcher); returns (x_q, scales [M, 1] float32).

    With pad_rows_to > 1 the outputs have M rounded up to that multiple; the extra rows are left
    unwritten (their products are discarded by the caller), which is what some GEMMs need.
    """
    if dtype not in (torch.float8_e4m3fn, torch.int8):
        raise ValueError(f"unsupported activation quantization dtype {dtype}")
    m, k = x.shape
    if not use_triton(x) or x.numel() == 0:
        q, s = quant_per_token_ref(x, dtype)
        if pad_rows_to > 1 and m % pad_rows_to:
            extra = pad_rows_to - m % pad_rows_to
            q = torch.cat([q, torch.zeros(extra, k, dtype=dtype, device=x.device)])
            s = torch.cat([s, torch.ones(extra, 1, dtype=s.dtype, device=x.device)])
        return q, s
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows = -(-m // pad_rows_to) * pad_rows_to
    q = torch.empty(rows, k, dtype=dtype, device=x.device)
    s = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if rows > m:
        # Padding rows: a zero input with unit scale keeps whatever reads them finite.
        q[m:].view(torch.uint8).zero_()  # bits 0 are +0.0 in fp8, 0 in int8
        s[m:].fill_(1.0)
    block = min(4096, triton.next_power_of_2(k))
    _quant_per_token_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0),
                                  IS_INT8=dtype == torch.int8, BLOCK=block, **pdl_args(x),
                                  num_warps=max(1, min(8, block // 256)))
    return q, s
