"""Quantized linear layers: int4/int8 weight-only and fp8/int8 W8A8 (x [..., K] @ W[N, K].T).

Layouts (the quantizers in kiln/quant produce exactly these):
  int4 weight-only: uint8 [N, K // 2], byte j of row n holds k = 2j (low nibble) and 2j + 1 (high
    nibble) as q + 8, q in [-8, 7]; float32 scales [N, K // group_size]; w = q * scale.
  int8 weight-only: int8 [N, K] with float32 per-channel scales [N].
  fp8 W8A8: float8_e4m3fn [N, K], scales [N]; activations quantized per token (kiln.kernels.quant_act).
  int8 W8A8 (SmoothQuant): int8 [N, K], scales [N]; activations per token as int8.

Kernels (Triton, CUDA):
  _gemv_kernel  small M (decode): each program owns BLOCK_N output columns for all M rows and
                streams its weight rows along K once; dequantized values meet x in float32 FMAs.
  _gemm_kernel  larger M (prefill): tiles dequantized to x's dtype (or raw int8/fp8 for W8A8)
                feeding tl.dot.
  _tc_gemv_kernel  fp8 W8A8 and unquantized bf16/fp16 decode rows (M <= 16) on the tensor cores,
                operands swapped so the weights stream through shared memory untouched (the
                default for those rows; KILN_TC_GEMV).
Both can split K across programs (partials in float32, summed by _splitk_reduce_kernel), so a
layer with few output tiles (N = 4096) still fills the GPU. fp8 prefill uses torch._scaled_mm
(row-wise scales); int8 W8A8 prefill uses the Triton int8 GEMM (torch._int_mm is a bench option).
References (`*_ref`) dequantize and multiply in float32 on any device.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
import triton.testing

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start, prefetch_l2
from kiln.kernels.quant_act import quant_per_token, quantize_to_codes, token_scale

# Weight kinds (constexpr WKIND in the kernels).
W_INT4 = 0     # packed uint8 nibbles, group-wise scales
W_INT8_U = 1   # int8 weights viewed as uint8 (dequantized with the bias trick below)
W_FP8 = 2      # float8_e4m3fn weights
W_INT8 = 3     # raw int8 weights for an int8 x int8 tl.dot (W8A8 GEMM)
W_FLOAT = 4    # unquantized bf16/fp16/fp32 weights (the GEMV only: a cuBLAS alternative)

GEMV_MAX_M = 4          # rows up to which the FMA GEMV kernel runs (above: tl.dot kernels)
SMALL_M = 16            # M up to which the tl.dot kernel may split K; fp8 uses it below _scaled_mm
KTILE_8BIT = 128        # K tile of the int8/fp8 kernels (int4 tiles are the scale group)


# ----------------------------------------------------------------------------------- references

def dequantize_int4_ref(qweight: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Packed int4 [N, K // 2] + scales [N, K // group_size] -> float32 weights [N, K]."""
    q = torch.stack([(qweight & 15).to(torch.int16) - 8, (qweight >> 4).to(torch.int16) - 8], dim=-1)
    q = q.reshape(qweight.shape[0], -1).float()
    return q * scales.float().repeat_interleave(group_size, dim=1)


def _finish_ref(y: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Add the bias in float32, cast to x's dtype and restore x's leading shape."""
    if bias is not None:
        y = y + bias.float()
    return y.to(like.dtype).reshape(*like.shape[:-1], y.shape[-1])


def int4_wo_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference int4 weight-only linear: dequantize to float32 and multiply."""
    w = dequantize_int4_ref(qweight, scales, group_size)
    return _finish_ref(x.reshape(-1, x.shape[-1]).float() @ w.T, bias, x)


def int8_wo_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference int8 weight-only linear (per-channel scales), float32."""
    w = qweight.float() * scales.float()[:, None]
    return _finish_ref(x.reshape(-1, x.shape[-1]).float() @ w.T, bias, x)


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference fp8 W8A8 linear: per-token fp8 activations, float32 product of the fp8 values."""
    from kiln.kernels.quant_act import quant_per_token_ref
    xq, sx = quant_per_token_ref(x.reshape(-1, x.shape[-1]), torch.float8_e4m3fn)
    return _finish_ref(_fp8_product_ref(xq, sx, weight, weight_scale), bias, x)


def _fp8_product_ref(xq: torch.Tensor, sx: torch.Tensor, weight: torch.Tensor,
                     weight_scale: torch.Tensor) -> torch.Tensor:
    """float32 product of per-token fp8 codes xq [M, K] (scales sx [M, 1]) and fp8 weights."""
    return (xq.float() @ weight.float().T) * sx * weight_scale.float()[None, :]


def int8_sq_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference int8 W8A8 linear: per-token int8 activations, exact integer product, then scales."""
    from kiln.kernels.quant_act import quant_per_token_ref
    xq, sx = quant_per_token_ref(x.reshape(-1, x.shape[-1]), torch.int8)
    # float64 holds the int32 dot products exactly (|sum| < 2**53) on every device.
    acc = xq.double() @ weight.double().T
    y = acc.float() * sx * weight_scale.float()[None, :]
    return _finish_ref(y, bias, x)


# ------------------------------------------------------------------------------ Triton helpers

@triton.jit
def _int4_rows(offs_n, stride_wn, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """Byte offset of each row's group 0 in int4 weights stored in blocks of ROW_BLOCK rows
    (tile_int4_rows): [N / ROW_BLOCK, K / GROUP, ROW_BLOCK, GROUP / 2] bytes, so that group g of
    a block's rows is one run of ROW_BLOCK * GROUP / 2 bytes, at g * ROW_BLOCK * GROUP / 2."""
    n = offs_n.to(tl.int64)
    return (n // ROW_BLOCK) * (ROW_BLOCK * stride_wn) + (n % ROW_BLOCK) * (GROUP // 2)


@triton.jit
def _load_weight(w_ptr, offs_n, g, stride_wn, K, n_mask, valid,
                 GROUP: tl.constexpr, WKIND: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """Raw weight tile of K-group g: [BLOCK_N, GROUP // 2] bytes for int4, else [BLOCK_N, GROUP].
    ROW_BLOCK > 1 (int4): the rows are stored in blocks (_int4_rows)."""
    if WKIND == 0 and ROW_BLOCK > 1:
        offs_b = g * (ROW_BLOCK * (GROUP // 2)) + tl.arange(0, GROUP // 2)
        rows = w_ptr + _int4_rows(offs_n, stride_wn, GROUP, ROW_BLOCK)[:, None]
        return tl.load(rows + offs_b[None, :], mask=n_mask[:, None] & valid, other=0.0)
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    if WKIND == 0:
        offs_b = g * (GROUP // 2) + tl.arange(0, GROUP // 2)
        tile = tl.load(rows + offs_b[None, :], mask=n_mask[:, None] & valid, other=0.0)
    else:
        offs_k = g * GROUP + tl.arange(0, GROUP)
        tile = tl.load(rows + offs_k[None, :], mask=n_mask[:, None] & (offs_k < K)[None, :] & valid,
                       other=0.0)
    return tile


@triton.jit
def _nibbles_f32(b):
    """Packed bytes -> (low, high) nibbles as float32 q in [-8, 7].

    OR-ing a value below 2**23 into the bits of 2.0**23 makes the float 2**23 + value, so one
    subtraction gives the number: no int-to-float conversion (a quarter-rate instruction).
    """
    b = b.to(tl.int32)
    lo = ((b & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    hi = ((b >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    return lo, hi


# Eight int4 nibbles of a 32-bit word $8 (nibble i at bits 4 i, stored as q + 8) -> four bfloat16
# pairs q = nibble - 8, exact (PTX, sm_90+): kq<s> holds nibbles s (low half) and s + 4 (high
# half). Each nibble is OR'd into bfloat16 128.0 (0x4300), giving 128 + nibble exactly, and one
# packed FMA takes 136 off both halves. _INT4_WORD_ASM appends its moves out of kq0..kq3 and
# closes the block.
_INT4X8_BF16_PAIRS_PTX = """
{
.reg .b32 kq0, kq1, kq2, kq3, kone, koff;
mov.b32 kone, 0x3F803F80;
mov.b32 koff, 0xC308C308;
shr.u32 kq1, $8, 4;
shr.u32 kq2, $8, 8;
shr.u32 kq3, $8, 12;
lop3.b32 kq0, $8, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 kq1, kq1, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 kq2, kq2, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 kq3, kq3, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 kq0, kq0, kone, koff;
fma.rn.bf16x2 kq1, kq1, kone, koff;
fma.rn.bf16x2 kq2, kq2, kone, koff;
fma.rn.bf16x2 kq3, kq3, kone, koff;
"""

# Eight nibbles of a 32-bit word (k = 8j + i at bits 4i) to float32 q = nibble - 8, two at a time:
# the bfloat16 pairs of _INT4X8_BF16_PAIRS_PTX, each half then moved to the top of a float32
# (exact).
_INT4_WORD_ASM = tl.constexpr(_INT4X8_BF16_PAIRS_PTX + """shl.b32 $0, kq0, 16;
shl.b32 $1, kq1, 16;
shl.b32 $2, kq2, 16;
shl.b32 $3, kq3, 16;
and.b32 $4, kq0, 0xFFFF0000;
and.b32 $5, kq1, 0xFFFF0000;
and.b32 $6, kq2, 0xFFFF0000;
and.b32 $7, kq3, 0xFFFF0000;
}
""")


@triton.jit
def _int4_words_f32(word):
    """int32 words of packed nibbles -> 8 float32 tensors (k = 8j + 0 .. 8j + 7), CUDA only."""
    return tl.inline_asm_elementwise(_INT4_WORD_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [word],
                                     dtype=(tl.float32,) * 8, is_pure=True, pack=1)


# The same two-at-a-time trick, kept in 16 bits for tensor-core operands: the eight nibbles of a
# word as bf16 (base 128.0 = 0x4300, minus 136) or fp16 (base 1024.0 = 0x6400, minus 1032)
# values q = nibble - 8, each 16-bit half of a packed result being one output.
_INT4_WORD_16_ASM = """
{{
.reg .b32 kq0, kq1, kq2, kq3, kone, koff;
mov.b32 kone, {one};
mov.b32 koff, {off};
shr.u32 kq1, $8, 4;
shr.u32 kq2, $8, 8;
shr.u32 kq3, $8, 12;
lop3.b32 kq0, $8, 0x000F000F, {base}, 0xEA;
lop3.b32 kq1, kq1, 0x000F000F, {base}, 0xEA;
lop3.b32 kq2, kq2, 0x000F000F, {base}, 0xEA;
lop3.b32 kq3, kq3, 0x000F000F, {base}, 0xEA;
fma.rn.{ty}x2 kq0, kq0, kone, koff;
fma.rn.{ty}x2 kq1, kq1, kone, koff;
fma.rn.{ty}x2 kq2, kq2, kone, koff;
fma.rn.{ty}x2 kq3, kq3, kone, koff;
mov.b32 {{$0, $4}}, kq0;
mov.b32 {{$1, $5}}, kq1;
mov.b32 {{$2, $6}}, kq2;
mov.b32 {{$3, $7}}, kq3;
}}
"""
_INT4_WORD_BF16_ASM = tl.constexpr(_INT4_WORD_16_ASM.format(one="0x3F803F80", off="0xC308C308",
                                                            base="0x43004300", ty="bf16"))
_INT4_WORD_F16_ASM = tl.constexpr(_INT4_WORD_16_ASM.format(one="0x3C003C00", off="0xE408E408",
                                                           base="0x64006400", ty="f16"))


@triton.jit
def _int4_words_16(word, X_BF16: tl.constexpr, ASM: tl.constexpr):
    """int32 words of packed nibbles -> 8 tensors of q = nibble - 8 (k = 8j + 0 .. 8j + 7) in
    bf16 (X_BF16) or fp16; exact. ASM (CUDA): two values per PTX instruction; else plain ops."""
    if ASM:
        if X_BF16:
            return tl.inline_asm_elementwise(_INT4_WORD_BF16_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r",
                                             [word], dtype=(tl.bfloat16,) * 8, is_pure=True,
                                             pack=1)
        else:
            return tl.inline_asm_elementwise(_INT4_WORD_F16_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r",
                                             [word], dtype=(tl.float16,) * 8, is_pure=True,
                                             pack=1)
    else:
        ty = tl.bfloat16 if X_BF16 else tl.float16
        return (((word & 15) - 8).to(tl.float32).to(ty),
                (((word >> 4) & 15) - 8).to(tl.float32).to(ty),
                (((word >> 8) & 15) - 8).to(tl.float32).to(ty),
                (((word >> 12) & 15) - 8).to(tl.float32).to(ty),
                (((word >> 16) & 15) - 8).to(tl.float32).to(ty),
                (((word >> 20) & 15) - 8).to(tl.float32).to(ty),
                (((word >> 24) & 15) - 8).to(tl.float32).to(ty),
                (((word >> 28) & 15) - 8).to(tl.float32).to(ty))


def _int4_dot_ptx(words: int) -> str:
    """PTX of the float16 int4 product over `words` consecutive 32-bit weight words ($1: one
    32-bit or, for two, one 64-bit register; $2.. the x pairs; $0 the float32 dot).

    One word holds k = 8j + i at bits 4i. OR-ing a masked word into fp16 1024.0 (0x6400) puts
    nibbles i and i + 4 in the two halves as 1024 + n (mask 0x000F000F) or 1024 + 16 n (mask
    0x00F000F0); one packed add (-1032) or FMA (x 1/16, -72) makes both q = n - 8 exactly. Packed
    FMAs then take the dot with x pairs (x[i], x[i + 4]) in float16, 4 * words products per half
    (no half can overflow while |x| < 2048 / words), and the two halves are summed in float32.
    """
    regs = ["$1"] if words == 1 else ["kw0", "kw1"]
    h = [f"kh{i}" for i in range(4 * words)]
    declared = (regs if words > 1 else []) + [f"kw{w}s8" for w in range(words)] + h
    lines = [".reg .b32 " + ", ".join(declared + ["kmo", "kms", "kmr", "kacc"]) + ";",
             ".reg .f16 klo, khi;", ".reg .f32 kflo, kfhi;",
             "mov.b32 kmo, 0xE408E408;", "mov.b32 kms, 0x2C002C00;", "mov.b32 kmr, 0xD480D480;"]
    if words > 1:
        lines.append("mov.b64 {kw0, kw1}, $1;")
    for w, reg in enumerate(regs):
        lines.append(f"shr.u32 kw{w}s8, {reg}, 8;")
    for w, reg in enumerate(regs):
        for i, (src, mask) in enumerate(((reg, "0x000F000F"), (reg, "0x00F000F0"),
                                         (f"kw{w}s8", "0x000F000F"), (f"kw{w}s8", "0x00F000F0"))):
            lines.append(f"lop3.b32 {h[4 * w + i]}, {src}, {mask}, 0x64006400, 0xEA;")
    for i, r in enumerate(h):
        lines.append(f"add.rn.f16x2 {r}, {r}, kmo;" if i % 2 == 0 else f"fma.rn.f16x2 {r}, {r}, kms, kmr;")
    for i, r in enumerate(h):
        lines.append(f"mul.rn.f16x2 kacc, {r}, ${i + 2};" if i == 0
                     else f"fma.rn.f16x2 kacc, {r}, ${i + 2}, kacc;")
    lines += ["mov.b32 {klo, khi}, kacc;", "cvt.f32.f16 kflo, klo;", "cvt.f32.f16 kfhi, khi;",
              "add.f32 $0, kflo, kfhi;"]
    return "{\n" + "\n".join(lines) + "\n}"


# INT4_ASM 2/3: one word per product chain; 4/5: two (one 64-bit load, k = 16j .. 16j + 15),
# half the conversions per weight.
_INT4_WORD_DOT_ASM = tl.constexpr(_int4_dot_ptx(1))
_INT4_DWORD_DOT_ASM = tl.constexpr(_int4_dot_ptx(2))

# x as 32-bit words of bfloat16 pairs (x0 x1, x2 x3, x4 x5, x6 x7; low half first) -> the float16
# pairs the word dot takes: (x0, x4), (x1, x5), (x2, x6), (x3, x7). Values beyond float16's range
# become inf (no saturation), which the GEMV's overflow check then sees.
_X_PAIRS_BF16_ASM = tl.constexpr("""
{
.reg .f32 ka0, ka1, kb0, kb1, kc0, kc1, kd0, kd1;
shl.b32 ka0, $4, 16;
and.b32 ka1, $4, 0xFFFF0000;
shl.b32 kb0, $5, 16;
and.b32 kb1, $5, 0xFFFF0000;
shl.b32 kc0, $6, 16;
and.b32 kc1, $6, 0xFFFF0000;
shl.b32 kd0, $7, 16;
and.b32 kd1, $7, 0xFFFF0000;
cvt.rn.f16x2.f32 $0, kc0, ka0;
cvt.rn.f16x2.f32 $1, kc1, ka1;
cvt.rn.f16x2.f32 $2, kd0, kb0;
cvt.rn.f16x2.f32 $3, kd1, kb1;
}
""")
# The same for float16 x: a byte permute per pair.
_X_PAIRS_F16_ASM = tl.constexpr("""
prmt.b32 $0, $4, $6, 0x5410;
prmt.b32 $1, $4, $6, 0x7632;
prmt.b32 $2, $5, $7, 0x5410;
prmt.b32 $3, $5, $7, 0x7632;
""")


@triton.jit
def _x_pairs_f16(a, b, c, d, X_F16: tl.constexpr):
    """Four int32 words of 16-bit x (8 consecutive values) -> four float16 pairs, as int32."""
    if X_F16:
        return tl.inline_asm_elementwise(_X_PAIRS_F16_ASM, "=r,=r,=r,=r,r,r,r,r", [a, b, c, d],
                                         dtype=(tl.int32,) * 4, is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(_X_PAIRS_BF16_ASM, "=r,=r,=r,=r,r,r,r,r", [a, b, c, d],
                                         dtype=(tl.int32,) * 4, is_pure=True, pack=1)


@triton.jit
def _x_pairs_at(x_words, mask, X_F16: tl.constexpr):
    """The float16 pairs of the 8 x values at x_words[0:4] (int32 pointers, masked to 0)."""
    return _x_pairs_f16(tl.load(x_words, mask=mask, other=0), tl.load(x_words + 1, mask=mask, other=0),
                        tl.load(x_words + 2, mask=mask, other=0), tl.load(x_words + 3, mask=mask, other=0),
                        X_F16)


@triton.jit
def _int4_dword_dot(dword, p0, p1, p2, p3, p4, p5, p6, p7):
    """int64 double words of packed nibbles . float16 x pairs -> float32 dot per double word."""
    return tl.inline_asm_elementwise(_INT4_DWORD_DOT_ASM, "=r,l,r,r,r,r,r,r,r,r",
                                     [dword, p0, p1, p2, p3, p4, p5, p6, p7],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _int4_word_dot(word, p0, p1, p2, p3):
    """int32 words of packed nibbles . float16 x pairs (broadcast) -> float32 dot per word."""
    return tl.inline_asm_elementwise(_INT4_WORD_DOT_ASM, "=r,r,r,r,r,r", [word, p0, p1, p2, p3],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _finish_tile(acc, rows2, cols2, mask, out_ptr, part_ptr, lock_ptr, bias_ptr, tile, pid_k, M, N,
                 stride_om, SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr):
    """Store one program's float32 tile acc of out[rows2, cols2] (row and column indices
    broadcast to acc's shape, either orientation). Unsplit: with the bias, in out's dtype.
    Split: as split pid_k's partial; with FUSED_SPLITK the last of the tile's SPLIT_K programs to
    arrive sums the partials in split order (the additions of _splitk_reduce_kernel, so the same
    bits) and re-arms the tile's counter lock_ptr[tile] for the next launch: no second kernel."""
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols2, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows2 * stride_om + cols2, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + (pid_k * M + rows2) * N + cols2, acc, mask=mask)
        if FUSED_SPLITK:
            tl.debug_barrier()  # every thread's partial stores precede the release below
            arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:
                tl.debug_barrier()
                total = tl.zeros_like(acc)
                for sk in range(0, SPLIT_K):
                    total += tl.load(part_ptr + (sk * M + rows2) * N + cols2, mask=mask, other=0.0,
                                     cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + cols2, mask=mask, other=0.0).to(tl.float32)
                tl.store(out_ptr + rows2 * stride_om + cols2, total.to(out_ptr.dtype.element_ty),
                         mask=mask)
                tl.atomic_xchg(lock_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def _prefetch_rows(w_ptr, offs_n, n_mask, stride_wn, k_begin, k_end, ELEM_BYTES: tl.constexpr):
    """L2 prefetch of elements [k_begin, k_end) of weight rows offs_n (where n_mask), one bulk
    prefetch per row (rows 16-byte aligned, the range a multiple of 16 bytes)."""
    addr = (w_ptr + offs_n.to(tl.int64) * stride_wn + k_begin).to(tl.int64, bitcast=True)
    nbytes = (k_end - k_begin) * ELEM_BYTES
    prefetch_l2(addr, tl.zeros_like(offs_n) + nbytes, n_mask & (nbytes > 0))


@triton.jit
def _prefetch_budget(PREFETCH: tl.constexpr, PREFETCH_MB: tl.constexpr, step_bytes):
    """K steps one program prefetches: PREFETCH, or fewer so that the launch's programs together
    ask for at most PREFETCH_MB MiB (when > 0) of step_bytes each per step."""
    if PREFETCH_MB > 0:
        programs = tl.num_programs(0) * tl.num_programs(1)
        return tl.minimum(PREFETCH, (PREFETCH_MB * 1048576) // (programs * step_bytes))
    else:
        return PREFETCH


@triton.jit
def _split_range(steps, SPLIT_K, pid_k):
    """The K steps [begin, end) of split pid_k when `steps` are cut into SPLIT_K equal runs."""
    per_split = tl.cdiv(steps, SPLIT_K)
    begin = pid_k * per_split
    return begin, tl.minimum(begin + per_split, steps)


@triton.jit
def _few_rows_tile(M, N, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Program (N tile, K split) of a kernel for a few rows: (pid_n, pid_k, output columns and
    their mask, the BLOCK_M rows and their mask)."""
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    return pid_n, tl.program_id(1), offs_n, offs_n < N, rows, rows < M


@triton.jit
def _tc_gemv_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                    M, N, K, stride_xm, stride_wn, stride_om, num_sms, split_hint,
                    A8: tl.constexpr, HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr,
                    BLOCK_M: tl.constexpr, SPLIT_K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    split_cfg=0, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
                    PREFETCH_MB: tl.constexpr = 0, STREAM_K: tl.constexpr = 0,
                    EARLY_W: tl.constexpr = 0):
    # A few rows (M <= BLOCK_M = 16) times fp8 (W8A8: fp8 codes of x, per-token scales xs and
    # per-channel weight scales ws) or float16/bfloat16 weights [N, K] on the tensor cores,
    # operands swapped: out^T tile [BLOCK_N, BLOCK_M] = W tile [BLOCK_N, K] @ x^T [K, BLOCK_M], so
    # the weights, the bytes that matter, go from memory to shared memory to the tensor cores
    # untouched by the registers (no conversion, no FMAs), and x pads only the dot's narrow side.
    # Grid (N tiles, K splits); split_cfg as in _gemv_kernel (read by the heuristic only).
    # PREFETCH > 0 (CUDA, with PDL): before waiting for the kernel before, ask for the first
    # PREFETCH K steps of this program's weight rows in L2 (they do not depend on it); with
    # PREFETCH_MB > 0 at most that many MiB over the whole launch (_prefetch_budget).
    # STREAM_K > 0: grid (P, 1) instead, and the tiles' K steps, taken in order as one run of
    # units (tile by tile), are cut into P equal runs, one per program, so every program streams
    # the same number of weight bytes whatever the tile count (no partial last wave). A program
    # whose run covers part of a tile leaves a partial (_tc_stream_k_tiles).
    # EARLY_W 1, 2 or 4 (split-K grid, with PDL): the weight tiles of the first EARLY_W K steps are
    # loaded into registers before waiting for the kernel before (_tc_tile_acc).
    if STREAM_K > 0:
        pdl_start(PDL)
        _tc_stream_k_tiles(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                           M, N, K, stride_xm, stride_wn, stride_om, A8, HAS_BIAS, FUSED_SPLITK,
                           BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        pid_n, pid_k, offs_n, n_mask, rows, m_mask = _few_rows_tile(M, N, BLOCK_N, BLOCK_M)
        s_begin, s_end = _split_range(tl.cdiv(K, BLOCK_K), SPLIT_K, pid_k)
        if PREFETCH > 0:
            ELEM: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
            steps = _prefetch_budget(PREFETCH, PREFETCH_MB, BLOCK_N * BLOCK_K * ELEM)
            _prefetch_rows(w_ptr, offs_n, n_mask, stride_wn, s_begin * BLOCK_K,
                           tl.minimum(tl.minimum(s_end, s_begin + steps) * BLOCK_K, K), ELEM)
        acc = _tc_tile_acc(x_ptr, xs_ptr, w_ptr, ws_ptr, offs_n, n_mask, rows, m_mask, s_begin,
                           s_end, K, stride_xm, stride_wn, A8, BLOCK_M, BLOCK_N, BLOCK_K, PDL,
                           EARLY_W)
        _finish_tile(acc, rows[None, :], offs_n[:, None], n_mask[:, None] & m_mask[None, :],
                     out_ptr, part_ptr, lock_ptr, bias_ptr, pid_n, pid_k, M, N, stride_om, SPLIT_K,
                     HAS_BIAS, FUSED_SPLITK)


@triton.jit
def _tc_tile_acc(x_ptr, xs_ptr, w_ptr, ws_ptr, offs_n, n_mask, rows, m_mask, s_begin, s_end, K,
                 stride_xm, stride_wn, A8: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
                 EARLY_W: tl.constexpr = 0):
    """The tensor-core GEMV's float32 out^T tile [BLOCK_N, BLOCK_M] over K steps
    [s_begin, s_end) (fp8: times both scales). Waits for the kernel before (pdl_start) before
    its first read of x; with EARLY_W 1, 2 or 4 the weight tiles of the first EARLY_W steps (which
    no kernel writes) are loaded into registers before that wait, so that under PDL their reads
    overlap the end of the kernel before. The products are summed in the same order either way."""
    kk = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    x_cols = x_ptr + rows[None, :] * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    first = s_begin
    if EARLY_W > 0:
        # one [BLOCK_N, EARLY_W * BLOCK_K] load (two separate ones made ptxas wait for the first
        # before issuing the second); its K runs in order, as the steps' would
        ke = s_begin * BLOCK_K + tl.arange(0, EARLY_W * BLOCK_K)
        oke = ke < tl.minimum(s_end * BLOCK_K, K)
        we = tl.load(w_rows + ke[None, :], mask=n_mask[:, None] & oke[None, :], other=0.0)
        pdl_start(PDL)
        xe = tl.load(x_cols + ke[:, None], mask=m_mask[None, :] & oke[:, None], other=0.0)
        acc = tl.dot(we, xe, acc)
        first = tl.minimum(s_begin + EARLY_W, s_end)
    else:
        pdl_start(PDL)
    for step in range(first, s_end):
        offs_k = step * BLOCK_K + kk
        k_ok = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_ok[None, :], other=0.0)
        xt = tl.load(x_cols + offs_k[:, None], mask=m_mask[None, :] & k_ok[:, None], other=0.0)
        acc = tl.dot(w, xt, acc)
    if A8:
        sw = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
        sx = tl.load(xs_ptr + rows, mask=m_mask, other=0.0)
        acc = acc * sw[:, None] * sx[None, :]
    return acc


@triton.jit
def _stream_k_owner(unit, P, U):
    """The program whose run holds unit `unit` when U units are cut into P runs, run p being
    [p * U // P, (p + 1) * U // P)."""
    return ((unit + 1) * P - 1) // U


@triton.jit
def _stream_k_run(N, steps, BLOCK_N: tl.constexpr):
    """This program's run of a stream-K launch over cdiv(N, BLOCK_N) tiles of `steps` K steps:
    (p, P, units, first unit, end unit)."""
    p = tl.program_id(0)
    P = tl.num_programs(0)
    units = tl.cdiv(N, BLOCK_N) * steps
    return p, P, units, (p * units) // P, ((p + 1) * units) // P


@triton.jit
def _stream_k_contributor(tile, steps, p, P, units, FUSED_SPLITK: tl.constexpr):
    """(this program's number among the tile's contributors, their count) for _finish_tile: the
    programs whose runs meet the tile, in program order. Without FUSED_SPLITK the count is
    unbounded, so that every tile, whole ones too, leaves its partials for the separate reduce."""
    first = _stream_k_owner(tile * steps, P, units)
    contributors = _stream_k_owner((tile + 1) * steps - 1, P, units) - first + 1
    if not FUSED_SPLITK:
        contributors = 0x7FFFFFFF
    return p - first, contributors


@triton.jit
def _tc_stream_k_tiles(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                       M, N, K, stride_xm, stride_wn, stride_om, A8: tl.constexpr,
                       HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One stream-K program of _tc_gemv_kernel: the units [p U / P, (p + 1) U / P) of the
    U = tiles x K steps, tile by tile. A tile's contributors are the programs whose runs meet
    it, numbered from 0 in program order; contributor c of a tile with C of them stores its
    partial as split c and the tile is finished as a C-way split (_finish_tile: with
    FUSED_SPLITK the last to arrive sums them in contributor order). Without FUSED_SPLITK every
    tile leaves partials, even a whole one (C is then taken as unbounded), for the caller to
    sum over the zero-filled buffer."""
    steps = tl.cdiv(K, BLOCK_K)
    p, P, units, u_begin, u_end = _stream_k_run(N, steps, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    m_mask = rows < M
    for tile in range(u_begin // steps, tl.cdiv(u_end, steps)):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        acc = _tc_tile_acc(x_ptr, xs_ptr, w_ptr, ws_ptr, offs_n, n_mask, rows, m_mask,
                           tl.maximum(u_begin, tile * steps) - tile * steps,
                           tl.minimum(u_end, (tile + 1) * steps) - tile * steps, K, stride_xm,
                           stride_wn, A8, BLOCK_M, BLOCK_N, BLOCK_K)
        contributor, contributors = _stream_k_contributor(tile, steps, p, P, units, FUSED_SPLITK)
        _finish_tile(acc, rows[None, :], offs_n[:, None], n_mask[:, None] & m_mask[None, :],
                     out_ptr, part_ptr, lock_ptr, bias_ptr, tile, contributor, M, N, stride_om,
                     contributors, HAS_BIAS, FUSED_SPLITK)


@triton.jit
def _int4_tc_gemv_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr, M, N, K, stride_xm,
                         stride_wn, stride_sn, stride_sg, stride_om, SPLIT_K,
                         GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                         HAS_BIAS: tl.constexpr, X_BF16: tl.constexpr, ASM: tl.constexpr,
                         ONE_DOT: tl.constexpr = False, PDL: tl.constexpr = False):
    # int4 weight-only product for a few rows on the tensor cores, operands swapped: out^T tile
    # [BLOCK_N, BLOCK_M] = W tile [BLOCK_N, K] @ x^T [K, BLOCK_M], so the dequantized weights are
    # the dot's first operand, straight from registers, and x (BLOCK_M <= 16 rows, padded) the
    # small second one. Per K group, the eight nibbles of each 32-bit word are eight [BLOCK_N,
    # GROUP / 8] operands, each dotted with the x columns k = 8c + i that it holds: a fixed
    # permutation of k within the group, the same on both sides. Grid (N tiles, K splits).
    pdl_start(PDL)
    pid_n, pid_k, offs_n, n_mask, rows, m_mask = _few_rows_tile(M, N, BLOCK_N, BLOCK_M)
    WORDS: tl.constexpr = GROUP // 8
    cols = tl.arange(0, WORDS)
    words = w_ptr.to(tl.pointer_type(tl.int32))
    w_rows = words + offs_n.to(tl.int64)[:, None] * (stride_wn // 4)
    g_begin, g_end = _split_range(tl.cdiv(K, GROUP), SPLIT_K, pid_k)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for g in range(g_begin, g_end):
        word = tl.load(w_rows + (g * WORDS + cols)[None, :], mask=n_mask[:, None], other=0)
        q0, q1, q2, q3, q4, q5, q6, q7 = _int4_words_16(word, X_BF16, ASM)
        if ONE_DOT:
            # The eight nibble tensors back in k order (join's new dim is the minor one: k = 8c +
            # 4u + 2v + b from join(join(join(q0, q4), join(q2, q6)), join(join(q1, q5), ...)),
            # then one dot with x^T over the whole group.
            w = tl.join(tl.join(tl.join(q0, q4), tl.join(q2, q6)),
                        tl.join(tl.join(q1, q5), tl.join(q3, q7)))
            w = tl.reshape(w, (BLOCK_N, GROUP))
            offs_k = g * GROUP + tl.arange(0, GROUP)
            xt = tl.load(x_ptr + rows[None, :] * stride_xm + offs_k[:, None], mask=m_mask[None, :],
                         other=0.0)
            part = tl.dot(w, xt)
        else:
            xk = x_ptr + rows[None, :] * stride_xm + (g * GROUP + 8 * cols)[:, None]
            xm = m_mask[None, :]
            part = tl.dot(q0, tl.load(xk, mask=xm, other=0.0))
            part = tl.dot(q1, tl.load(xk + 1, mask=xm, other=0.0), part)
            part = tl.dot(q2, tl.load(xk + 2, mask=xm, other=0.0), part)
            part = tl.dot(q3, tl.load(xk + 3, mask=xm, other=0.0), part)
            part = tl.dot(q4, tl.load(xk + 4, mask=xm, other=0.0), part)
            part = tl.dot(q5, tl.load(xk + 5, mask=xm, other=0.0), part)
            part = tl.dot(q6, tl.load(xk + 6, mask=xm, other=0.0), part)
            part = tl.dot(q7, tl.load(xk + 7, mask=xm, other=0.0), part)
        s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg, mask=n_mask, other=0.0)
        acc += part * s[:, None]
    mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + rows[None, :] * stride_om + offs_n[:, None],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + (pid_k * M + rows[None, :]) * N + offs_n[:, None], acc, mask=mask)


@triton.jit
def _bytes_f32(b, WKIND: tl.constexpr):
    """int8 (given as uint8 bits), fp8 or float tile -> float32."""
    if WKIND == 2 or WKIND == 4:
        return b.to(tl.float32)
    else:
        u = b.to(tl.int32)
        # u ^ 0x80 = q + 128 in [0, 255]; the same bias trick as for nibbles.
        return ((u ^ 0x80) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _gemv_load(w_ptr, s_ptr, offs_n, n_mask, g, valid, K, stride_wn, stride_sn, stride_sg,
               WKIND: tl.constexpr, GROUP: tl.constexpr, INT4_ASM: tl.constexpr,
               ROW_BLOCK: tl.constexpr):
    """K group g's scales and weights as _gemv_use takes them: int4 as 64-bit double words
    (INT4_ASM >= 4), 32-bit words (1 to 3) or bytes; other kinds as their raw tile. ROW_BLOCK > 1:
    int4 rows stored in blocks (_int4_rows)."""
    if WKIND == 4:
        s = 1.0  # unquantized weights have no scales (s_ptr is not read)
    else:
        s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg,
                    mask=n_mask & valid, other=0.0)
    if WKIND == 0 and INT4_ASM >= 4 and ROW_BLOCK > 1:
        dwords = w_ptr.to(tl.pointer_type(tl.int64))
        offs_d = g * (ROW_BLOCK * (GROUP // 16)) + tl.arange(0, GROUP // 16)
        w = tl.load(dwords + (_int4_rows(offs_n, stride_wn, GROUP, ROW_BLOCK) // 8)[:, None]
                    + offs_d[None, :], mask=n_mask[:, None] & valid, other=0)
    elif WKIND == 0 and INT4_ASM and ROW_BLOCK > 1:
        words = w_ptr.to(tl.pointer_type(tl.int32))
        offs_w = g * (ROW_BLOCK * (GROUP // 8)) + tl.arange(0, GROUP // 8)
        w = tl.load(words + (_int4_rows(offs_n, stride_wn, GROUP, ROW_BLOCK) // 4)[:, None]
                    + offs_w[None, :], mask=n_mask[:, None] & valid, other=0)
    elif WKIND == 0 and INT4_ASM >= 4:
        dwords = w_ptr.to(tl.pointer_type(tl.int64))
        offs_d = g * (GROUP // 16) + tl.arange(0, GROUP // 16)
        w = tl.load(dwords + offs_n.to(tl.int64)[:, None] * (stride_wn // 8) + offs_d[None, :],
                    mask=n_mask[:, None] & valid, other=0)
    elif WKIND == 0 and INT4_ASM:
        words = w_ptr.to(tl.pointer_type(tl.int32))
        offs_w = g * (GROUP // 8) + tl.arange(0, GROUP // 8)
        w = tl.load(words + offs_n.to(tl.int64)[:, None] * (stride_wn // 4) + offs_w[None, :],
                    mask=n_mask[:, None] & valid, other=0)
    else:
        w = _load_weight(w_ptr, offs_n, g, stride_wn, K, n_mask, valid, GROUP, WKIND, ROW_BLOCK)
    return s, w


@triton.jit
def _gemv_use(acc, acc_w, acc_d, s, w, x_ptr, x_scale, rows, g, valid, M, K, stride_xm,
              WKIND: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
              QX: tl.constexpr, INT4_ASM: tl.constexpr):
    """Add K group g's products of the weights w (scales s, both from _gemv_load) with x's rows
    to the accumulators (acc [BLOCK_M, BLOCK_N]; one row with INT4_ASM 2/3: acc_w per word, 4/5:
    acc_d per double word, summed by _gemv_acc at the end)."""
    if WKIND == 0 and INT4_ASM >= 4:
        offs_d = g * (GROUP // 16) + tl.arange(0, GROUP // 16)
        x_words = x_ptr.to(tl.pointer_type(tl.int32))
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_d * 16 < K) & (m < M) & valid
            x_row = x_words + m * (stride_xm // 2) + 8 * offs_d
            p0, p1, p2, p3 = _x_pairs_at(x_row, x_mask, INT4_ASM == 5)
            p4, p5, p6, p7 = _x_pairs_at(x_row + 4, x_mask, INT4_ASM == 5)
            dots = _int4_dword_dot(w, p0[None, :], p1[None, :], p2[None, :], p3[None, :],
                                   p4[None, :], p5[None, :], p6[None, :], p7[None, :])
            if BLOCK_M == 1:  # scaled per double word; summed once, at the end
                acc_d += dots * s[:, None]
            else:
                part = tl.sum(dots, axis=1) * s
                acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    elif WKIND == 0 and INT4_ASM >= 2:
        offs_w = g * (GROUP // 8) + tl.arange(0, GROUP // 8)
        x_words = x_ptr.to(tl.pointer_type(tl.int32))
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_w * 8 < K) & (m < M) & valid
            x_row = x_words + m * (stride_xm // 2) + 4 * offs_w
            p0, p1, p2, p3 = _x_pairs_at(x_row, x_mask, INT4_ASM == 3)
            dots = _int4_word_dot(w, p0[None, :], p1[None, :], p2[None, :], p3[None, :])
            if BLOCK_M == 1:  # scaled per word; summed over the words once, at the end
                acc_w += dots * s[:, None]
            else:
                part = tl.sum(dots, axis=1) * s
                acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    elif WKIND == 0 and INT4_ASM:
        q0, q1, q2, q3, q4, q5, q6, q7 = _int4_words_f32(w)
        offs_j = g * GROUP + 8 * tl.arange(0, GROUP // 8)
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_j < K) & (m < M) & valid
            x_row = x_ptr + m * stride_xm + offs_j
            p = q0 * tl.load(x_row, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q1 * tl.load(x_row + 1, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q2 * tl.load(x_row + 2, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q3 * tl.load(x_row + 3, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q4 * tl.load(x_row + 4, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q5 * tl.load(x_row + 5, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q6 * tl.load(x_row + 6, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            p += q7 * tl.load(x_row + 7, mask=x_mask, other=0.0).to(tl.float32)[None, :]
            part = tl.sum(p, axis=1) * s
            acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    elif WKIND == 0:
        lo, hi = _nibbles_f32(w)
        # x at even / odd k (tiny, served from L1) pairs with the low / high nibbles:
        # splitting x costs far less than interleaving the whole dequantized tile into
        # k order (a shared-memory round trip on sm_90).
        offs_k = g * GROUP + tl.arange(0, GROUP)
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_k < K) & (m < M) & valid
            xv = tl.load(x_ptr + m * stride_xm + offs_k, mask=x_mask, other=0.0).to(tl.float32)
            xe, xo = tl.split(tl.reshape(xv, (GROUP // 2, 2)))
            part = tl.sum(lo * xe[None, :] + hi * xo[None, :], axis=1) * s
            acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    else:
        wf = _bytes_f32(w, WKIND)
        offs_k = g * GROUP + tl.arange(0, GROUP)
        for m in tl.static_range(BLOCK_M):
            x_mask = (offs_k < K) & (m < M) & valid
            xv = tl.load(x_ptr + m * stride_xm + offs_k, mask=x_mask, other=0.0).to(tl.float32)
            if QX != 0:  # the code's value, as the GEMV would read it back
                xv = quantize_to_codes(xv, tl.sum(tl.where(rows == m, x_scale, 0.0), axis=0),
                                       QX == 2).to(tl.float32)
            part = tl.sum(wf * xv[None, :], axis=1) * s
            acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    return acc, acc_w, acc_d


@triton.jit
def _gemv_acc(x_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, g_begin, g_end, M, K, stride_xm,
              stride_wn, stride_sn, stride_sg, WKIND: tl.constexpr, GROUP: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
              QX: tl.constexpr, INT4_ASM: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """The GEMV's float32 [BLOCK_M, BLOCK_N] tile over K groups [g_begin, g_end), unscaled by x's
    scales (see _gemv_kernel)."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_w = tl.zeros([BLOCK_N, GROUP // 8], tl.float32)  # INT4_ASM 2/3, one row: per word
    acc_d = tl.zeros([BLOCK_N, GROUP // 16], tl.float32)  # INT4_ASM 4/5, one row
    for g0 in range(g_begin, g_end, UNROLL):
        for u in tl.static_range(UNROLL):
            g = g0 + u
            valid = g < g_end
            s, w = _gemv_load(w_ptr, s_ptr, offs_n, n_mask, g, valid, K, stride_wn, stride_sn,
                              stride_sg, WKIND, GROUP, INT4_ASM, ROW_BLOCK)
            acc, acc_w, acc_d = _gemv_use(acc, acc_w, acc_d, s, w, x_ptr, x_scale, rows, g, valid,
                                          M, K, stride_xm, WKIND, GROUP, BLOCK_M, QX, INT4_ASM)
    if WKIND == 0 and INT4_ASM >= 4 and BLOCK_M == 1:
        acc = tl.sum(acc_d, axis=1)[None, :]
    elif WKIND == 0 and INT4_ASM >= 2 and BLOCK_M == 1:
        acc = tl.sum(acc_w, axis=1)[None, :]
    return acc


@triton.jit(do_not_specialize=["split_cfg"])
def _gemv_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_wn, stride_sn, stride_sg, stride_om, num_sms, split_hint,
                 WKIND: tl.constexpr, A8: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                 SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr,
                 BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, QX: tl.constexpr = 0,
                 QX_BLOCK: tl.constexpr = 1024, INT4_ASM: tl.constexpr = 0, split_cfg=0,
                 PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
                 PREFETCH_MB: tl.constexpr = 0, STREAM_K: tl.constexpr = 0,
                 ROW_BLOCK: tl.constexpr = 1):
    # Grid (N tiles, K splits). The weight tile of each group is loaded once and used for all
    # BLOCK_M (<= 4) rows of x; each row's partial dot is reduced along K per group, so the
    # scale multiplies a [BLOCK_N] vector, not every element.
    # QX 1 (fp8) / 2 (int8): x is the float activation and each program quantizes it per token
    # itself with _quant_per_token_kernel's own helpers, so the products are the bits of the
    # separate quantization launch, which is saved.
    # INT4_ASM (CUDA): int4 weights are read as 32-bit words. 1: dequantized by _int4_words_f32
    # (two nibbles per packed instruction; 5-9% faster per 8B layer shape on the H200) and
    # multiplied in float32. 2 (bfloat16 x) / 3 (float16 x): multiplied two at a time in float16
    # by _int4_word_dot (about 35% fewer instructions per weight in the sm_90 SASS); 4 / 5: the
    # same over 64-bit double words (_int4_dword_dot, about 40% fewer). A tile that comes out
    # with an inf or nan is computed again as in 1, so float16's range never decides the result.
    # split_cfg: the K split a launch configuration asks for (0: the heuristic's); only the
    # SPLIT_K heuristic and the grid read it. A run-time value, so configurations that differ only
    # in it share one compiled kernel.
    # PREFETCH > 0 (CUDA, with PDL): as in _tc_gemv_kernel, over the first PREFETCH groups.
    # STREAM_K > 0: grid (P, 1), P programs each streaming an equal run of the tiles' K groups,
    # as in _tc_gemv_kernel (_stream_k_tiles).
    # ROW_BLOCK > 1 (int4, no PREFETCH): the weights are stored in blocks of ROW_BLOCK rows
    # (tile_int4_rows), so a program's rows of one group are runs of ROW_BLOCK * 64 bytes.
    rows = tl.arange(0, BLOCK_M)
    m_mask = rows < M
    if STREAM_K == 0:
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        g_begin, g_end = _split_range(tl.cdiv(K, GROUP), SPLIT_K, pid_k)
        if PREFETCH > 0:
            tl.static_assert(ROW_BLOCK == 1, "the L2 prefetch reads row-major weights")
            # weight elements per group and per row (int4: bytes of two nibbles)
            PER_GROUP: tl.constexpr = GROUP // 2 if WKIND == 0 else GROUP
            row_len = K // 2 if WKIND == 0 else K
            ELEM: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
            steps = _prefetch_budget(PREFETCH, PREFETCH_MB, BLOCK_N * PER_GROUP * ELEM)
            _prefetch_rows(w_ptr, offs_n, n_mask, stride_wn, g_begin * PER_GROUP,
                           tl.minimum(tl.minimum(g_end, g_begin + steps) * PER_GROUP, row_len), ELEM)
    pdl_start(PDL)
    x_scale = tl.zeros([BLOCK_M], tl.float32)
    if QX != 0:
        for m in tl.static_range(BLOCK_M):  # the whole row, from L2: every split needs its scale
            row_scale = token_scale(x_ptr + m * stride_xm, K, m < M, QX == 2, QX_BLOCK)
            x_scale = tl.where(rows == m, row_scale, x_scale)
    if STREAM_K == 0:
        acc = _gemv_tile(x_ptr, xs_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, m_mask,
                         g_begin, g_end, M, K, stride_xm, stride_wn, stride_sn, stride_sg, WKIND,
                         A8, GROUP, BLOCK_M, BLOCK_N, UNROLL, QX, INT4_ASM, ROW_BLOCK)
        _finish_tile(acc, rows[:, None], offs_n[None, :], m_mask[:, None] & n_mask[None, :],
                     out_ptr, part_ptr, lock_ptr, bias_ptr, pid_n, pid_k, M, N, stride_om,
                     SPLIT_K, HAS_BIAS, FUSED_SPLITK)
    else:
        steps = tl.cdiv(K, GROUP)
        p, P, units, u_begin, u_end = _stream_k_run(N, steps, BLOCK_N)
        for tile in range(u_begin // steps, tl.cdiv(u_end, steps)):
            offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < N
            acc = _gemv_tile(x_ptr, xs_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, m_mask,
                             tl.maximum(u_begin, tile * steps) - tile * steps,
                             tl.minimum(u_end, (tile + 1) * steps) - tile * steps, M, K,
                             stride_xm, stride_wn, stride_sn, stride_sg, WKIND, A8, GROUP,
                             BLOCK_M, BLOCK_N, UNROLL, QX, INT4_ASM, ROW_BLOCK)
            contributor, contributors = _stream_k_contributor(tile, steps, p, P, units,
                                                              FUSED_SPLITK)
            _finish_tile(acc, rows[:, None], offs_n[None, :], m_mask[:, None] & n_mask[None, :],
                         out_ptr, part_ptr, lock_ptr, bias_ptr, tile, contributor, M, N,
                         stride_om, contributors, HAS_BIAS, FUSED_SPLITK)


@triton.jit
def _gemv_tile(x_ptr, xs_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, m_mask, g_begin, g_end,
               M, K, stride_xm, stride_wn, stride_sn, stride_sg, WKIND: tl.constexpr,
               A8: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, QX: tl.constexpr,
               INT4_ASM: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """The GEMV's float32 [BLOCK_M, BLOCK_N] tile over K groups [g_begin, g_end), times x's
    scales (W8A8)."""
    acc = _gemv_acc(x_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, g_begin, g_end, M, K,
                    stride_xm, stride_wn, stride_sn, stride_sg, WKIND, GROUP, BLOCK_M, BLOCK_N,
                    UNROLL, QX, INT4_ASM, ROW_BLOCK)
    if INT4_ASM >= 2:
        # float16 products can overflow only where |x| reaches about 1,000: any inf or nan in
        # the tile re-runs it with float32 products (which give inf or nan only from the data)
        if tl.sum(((acc - acc) != 0).to(tl.int32)) > 0:
            acc = _gemv_acc(x_ptr, w_ptr, s_ptr, x_scale, offs_n, n_mask, rows, g_begin, g_end, M,
                            K, stride_xm, stride_wn, stride_sn, stride_sg, WKIND, GROUP, BLOCK_M,
                            BLOCK_N, UNROLL, QX, 1, ROW_BLOCK)
    if QX != 0:
        acc *= x_scale[:, None]
    elif A8:
        acc *= tl.load(xs_ptr + rows, mask=m_mask, other=0.0)[:, None]
    return acc


@triton.jit
def _gemm_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr,
                 M, N, K, stride_xm, stride_wn, stride_sn, stride_sg, stride_om, num_sms, split_hint,
                 WKIND: tl.constexpr, A8: tl.constexpr, GROUP: tl.constexpr, M_BUCKET: tl.constexpr,
                 SPLIT_K, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
                 SWIZZLE: tl.constexpr, PDL: tl.constexpr = False, ROW_BLOCK: tl.constexpr = 1):
    # ROW_BLOCK > 1 (int4): weights stored in blocks of rows, as for _gemv_kernel.
    # Grid (M tiles x N tiles, K splits). Weight-only: the dequantized tile (x's dtype) feeds
    # tl.dot and the group's scale multiplies the float32 product, so scales cost one
    # [BLOCK_M, BLOCK_N] FMA per group. W8A8: int8 x int8 (int32) or fp8 x fp8 (float32) dots,
    # both scales applied once at the end.
    pdl_start(PDL)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Walk SWIZZLE row-tiles together so their weight tiles are reused from L2.
    width = SWIZZLE * grid_n
    first_m = (pid // width) * SWIZZLE
    size_m = tl.minimum(grid_m - first_m, SWIZZLE)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    g_begin, g_end = _split_range(tl.cdiv(K, GROUP), SPLIT_K, pid_k)
    if A8 and WKIND == 3:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for g0 in range(g_begin, g_end, UNROLL):
        for u in tl.static_range(UNROLL):
            g = g0 + u
            valid = g < g_end
            tile = _load_weight(w_ptr, offs_n, g, stride_wn, K, n_mask, valid, GROUP, WKIND,
                                ROW_BLOCK)
            if WKIND == 0:
                # Even / odd k of x meet the low / high nibbles in two half-depth dots (no
                # interleave of the dequantized tile into k order).
                offs_k = g * GROUP + tl.arange(0, GROUP)
                x = tl.load(x_rows + offs_k[None, :],
                            mask=m_mask[:, None] & (offs_k < K)[None, :] & valid, other=0.0)
                xe, xo = tl.split(tl.reshape(x, (BLOCK_M, GROUP // 2, 2)))
                lo, hi = _nibbles_f32(tile)
                s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg,
                            mask=n_mask & valid, other=0.0)
                dot = tl.dot(xe, tl.trans(lo.to(xe.dtype)), input_precision=DOT_PREC)
                dot = tl.dot(xo, tl.trans(hi.to(xo.dtype)), dot, input_precision=DOT_PREC)
                acc += dot * s[None, :]
            else:
                offs_k = g * GROUP + tl.arange(0, GROUP)
                x = tl.load(x_rows + offs_k[None, :],
                            mask=m_mask[:, None] & (offs_k < K)[None, :] & valid, other=0.0)
                if A8:
                    acc += tl.dot(x, tl.trans(tile))
                else:
                    w = _bytes_f32(tile, WKIND).to(x.dtype)
                    s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g * stride_sg,
                                mask=n_mask & valid, other=0.0)
                    acc += tl.dot(x, tl.trans(w), input_precision=DOT_PREC) * s[None, :]
    if A8:
        sx = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
        sw = tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)
        acc = acc.to(tl.float32) * sx[:, None] * sw[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + (pid_k * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :], acc,
                 mask=mask)


@triton.jit
def _splitk_reduce_kernel(p_ptr, bias_ptr, out_ptr, M, N, stride_om,
                          SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                          PDL: tl.constexpr = False):
    # Fixed summation order, so split-K results are deterministic (no atomics).
    pdl_start(PDL)
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(p_ptr + (s * M + row) * N + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------ launch configs

def _cfg(num_warps: int, num_stages: int, **kw) -> triton.Config:
    return triton.Config(kw, num_warps=num_warps, num_stages=num_stages)


# Candidates timed on the first call per (rows/bucket, N, K, weight kind, group, dtypes). More
# rows per thread (larger BLOCK_N per warp) share each converted x value across rows. These take
# the K split of pick_split_k.
GEMV_BASE_CONFIGS = [
    _cfg(4, 3, BLOCK_N=32, UNROLL=2),
    _cfg(4, 3, BLOCK_N=64, UNROLL=1),
    _cfg(4, 3, BLOCK_N=64, UNROLL=2),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1),
    _cfg(8, 3, BLOCK_N=128, UNROLL=1),
    _cfg(8, 3, BLOCK_N=256, UNROLL=1),
]
# Candidates naming their own split (split_cfg): the settings that won per 8B layer shape in the
# batch-1 sweep (benchmarks/kernels/sweep_gemv_*_h200.json), where the heuristic's split lost up
# to 40% (int4 down: 34.8 us tuned, 21.0 us at split 16). Tuned only under KILN_GEMV_TUNE_SPLIT=1
# until the autotuner has run them on the H200.
GEMV_SPLIT_CONFIGS = [
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, split_cfg=8),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, split_cfg=16),
    _cfg(4, 3, BLOCK_N=64, UNROLL=1, split_cfg=16),
    _cfg(4, 3, BLOCK_N=64, UNROLL=2, split_cfg=8),
    _cfg(2, 3, BLOCK_N=32, UNROLL=1, split_cfg=2),
    _cfg(2, 3, BLOCK_N=32, UNROLL=1, split_cfg=8),
    _cfg(2, 3, BLOCK_N=32, UNROLL=1, split_cfg=16),
    _cfg(2, 3, BLOCK_N=16, UNROLL=1, split_cfg=8),
]
# Stream-K candidates (STREAM_K programs per SM, each an equal run of the tiles' K groups; see
# _gemv_kernel), tuned unless KILN_GEMV_STREAM_K=0. On the H200: int4 gate_up 31.25 -> 29.46 us at
# BLOCK_N 128 x 4 per SM (benchmarks/h200-quant/run-l); 8B int4-wo batch 1 with these three
# candidates 388.8 tok/s against 340.5 with split-K alone, one machine (run-m).
GEMV_STREAM_K_CONFIGS = [
    _cfg(4, 3, BLOCK_N=64, UNROLL=1, STREAM_K=4),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, STREAM_K=3),
    _cfg(4, 3, BLOCK_N=128, UNROLL=1, STREAM_K=4),
]
GEMV_CONFIGS = (GEMV_BASE_CONFIGS
                + (GEMV_SPLIT_CONFIGS if os.environ.get("KILN_GEMV_TUNE_SPLIT", "0") == "1" else [])
                + (GEMV_STREAM_K_CONFIGS if os.environ.get("KILN_GEMV_STREAM_K", "1") != "0" else []))
GEMM_CONFIGS_BY_BUCKET = {
    16: [_cfg(4, 4, BLOCK_M=16, BLOCK_N=64, UNROLL=1, SWIZZLE=1),
         _cfg(4, 4, BLOCK_M=16, BLOCK_N=128, UNROLL=1, SWIZZLE=1),
         _cfg(4, 3, BLOCK_M=16, BLOCK_N=64, UNROLL=2, SWIZZLE=1)],
    64: [_cfg(4, 4, BLOCK_M=64, BLOCK_N=64, UNROLL=1, SWIZZLE=8),
         _cfg(4, 3, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
         _cfg(4, 4, BLOCK_M=32, BLOCK_N=128, UNROLL=1, SWIZZLE=8)],
    256: [_cfg(4, 3, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
          _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
          _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, UNROLL=1, SWIZZLE=8),
          _cfg(4, 4, BLOCK_M=64, BLOCK_N=64, UNROLL=1, SWIZZLE=8)],
    1024: [_cfg(8, 3, BLOCK_M=128, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
           _cfg(8, 3, BLOCK_M=128, BLOCK_N=256, UNROLL=1, SWIZZLE=8),
           _cfg(8, 4, BLOCK_M=128, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
           _cfg(4, 3, BLOCK_M=64, BLOCK_N=256, UNROLL=1, SWIZZLE=8),
           _cfg(4, 4, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8),
           _cfg(4, 3, BLOCK_M=64, BLOCK_N=128, UNROLL=1, SWIZZLE=8)],
}
# Weight-only tiles beyond 64 x 128 spill registers on sm_90 (the dequantized tile lives in
# registers next to the accumulator; seen in the cubins); W8A8 tiles do not dequantize.
# One fixed configuration per kernel for the CPU interpreter (small, so tests stay fast, and
# with UNROLL 2 so the masked tail of the unrolled loop is exercised).
GEMM_CONFIGS = [c for cs in GEMM_CONFIGS_BY_BUCKET.values() for c in cs]
INTERPRET_GEMV = {"BLOCK_N": 16, "UNROLL": 2}
INTERPRET_GEMM = {"BLOCK_M": 16, "BLOCK_N": 32, "UNROLL": 2, "SWIZZLE": 2}
MAX_SPLIT_K = 16
DEFAULT_GEMV = 1  # index into GEMV_CONFIGS used without autotuning


def m_bucket(m: int) -> int:
    """The row-count bucket that selects GEMM candidates (16, 64, 256 or 1024 = anything larger)."""
    for b in (16, 64, 256):
        if m <= b:
            return b
    return 1024


def pick_split_k(tiles: int, num_groups: int, num_sms: int) -> int:
    """K splits so that layers with few output tiles still get about two programs per SM.

    Doubles while the grid is under 2 programs per SM and each split keeps at least 4 K-groups.
    """
    split = 1
    while split < MAX_SPLIT_K and tiles * split < 2 * num_sms and num_groups >= 8 * split:
        split *= 2
    return split


def split_for(m: int, n: int, k: int, group: int, num_sms: int, hint: int, block_n: int,
              block_m: int | None, cfg_split: int = 0) -> int:
    """SPLIT_K of one launch, from the tile sizes of the configuration being run.

    hint > 0 forces a split (benchmarks); rows above SMALL_M never split (no partial buffer is
    allocated for them). block_m is None for the GEMV (all rows in one tile). cfg_split > 0 is
    the configuration's own split (GEMV split_cfg), at most one per K group.
    """
    if hint > 0:
        return hint
    if m > SMALL_M:
        return 1
    if cfg_split > 0:
        return max(1, min(cfg_split, MAX_SPLIT_K, triton.cdiv(k, group)))
    tiles = triton.cdiv(n, block_n) * (1 if block_m is None else triton.cdiv(m, block_m))
    return pick_split_k(tiles, triton.cdiv(k, group), num_sms)


def _split_heuristic(args: dict) -> int:
    return split_for(args["M"], args["N"], args["K"], args["GROUP"], args["num_sms"],
                     args["split_hint"], args["BLOCK_N"], args["BLOCK_M"] if "SWIZZLE" in args else None,
                     int(args.get("split_cfg") or 0))


def _gemm_prune(configs, named_args, **kwargs):
    """Keep the candidates written for this call's M bucket (weight-only: no spilling tiles)."""
    wanted = GEMM_CONFIGS_BY_BUCKET[kwargs["M_BUCKET"]]
    keep = [c for c in configs if any(c is w for w in wanted)]
    if not kwargs["A8"]:
        keep = [c for c in keep if c.kwargs["BLOCK_M"] <= 64 and c.kwargs["BLOCK_N"] <= 128] or keep
    return keep


# Candidates of the tensor-core GEMV, per kind: the K split by pick_split_k over K / BLOCK_K
# steps, or named (split_cfg, a run-time argument: no compiled variant of its own). bf16: the
# batch-1 sweep's winners at the 8B layer shapes on the H200 (BLOCK_N 64 x BLOCK_K 128, split
# 1/2/4; benchmarks/kernels/sweep_gemv_tc_h200.json); few, so a bf16 checkpoint (no engine.json
# to store the tuning) tunes little at start-up. fp8: the set the engine runs were measured with.
# fp8 dots on sm_90 accumulate in reduced precision along one chain (Triton's default there), so
# no fp8 split runs more than TC_FP8_CHAIN_MAX of K: a cut set with whole-K splits (the sweep's
# fastest at some shapes) failed the float16 tolerance at K = 14336 on the H200 (2.9e-3 > 2e-3).
TC_FP8_CHAIN_MAX = 4096
TC_GEMV_CONFIGS_FP8 = [
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=256),
    _cfg(4, 3, BLOCK_N=128, BLOCK_K=128),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=4),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=256, split_cfg=4),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=8),
    _cfg(4, 3, BLOCK_N=128, BLOCK_K=128, split_cfg=8),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, STREAM_K=2),
]
TC_GEMV_CONFIGS_FLOAT = [
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=2),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, split_cfg=4),
    _cfg(4, 4, BLOCK_N=64, BLOCK_K=128, STREAM_K=2),
]
TC_GEMV_CONFIGS = TC_GEMV_CONFIGS_FP8 + TC_GEMV_CONFIGS_FLOAT
INTERPRET_TC_GEMV = {"BLOCK_N": 16, "BLOCK_K": 32}


def _tc_prune(configs, named_args, **kwargs):
    """Keep the candidates of this call's kind (fp8 codes or float weights)."""
    wanted = TC_GEMV_CONFIGS_FP8 if kwargs["A8"] else TC_GEMV_CONFIGS_FLOAT
    # a forced split (split_hint) leaves out the stream-K candidates, which cut K themselves
    return [c for c in configs if any(c is w for w in wanted)
            and not (c.kwargs.get("STREAM_K")
                     and (named_args["split_hint"] > 0 or not tc_stream_k_enabled()))]


def tc_split(m: int, n: int, k: int, block_k: int, num_sms: int, hint: int, block_n: int,
             cfg_split: int, a8: bool) -> int:
    """SPLIT_K of one tensor-core GEMV launch: split_for over K / block_k steps, raised for fp8 so
    that no split is longer than TC_FP8_CHAIN_MAX (a forced hint is kept as given)."""
    split = split_for(m, n, k, block_k, num_sms, hint, block_n, None, cfg_split)
    if a8 and hint <= 0:
        split = max(split, min(MAX_SPLIT_K, triton.cdiv(k, TC_FP8_CHAIN_MAX)))
    return min(split, triton.cdiv(k, block_k)) if hint <= 0 else split


def tc_stream_k(n: int, k: int, block_n: int, block_k: int, num_sms: int, per_sm: int,
                a8: bool) -> tuple[int, int]:
    """(programs, most contributors of one tile) of a stream-K tensor-core GEMV launch: per_sm
    programs per SM (at most one per unit), raised for fp8 so that no program's run within one
    tile is longer than TC_FP8_CHAIN_MAX of K."""
    steps = triton.cdiv(k, block_k)
    longest = max(1, TC_FP8_CHAIN_MAX // block_k) if a8 and steps * block_k > TC_FP8_CHAIN_MAX else 0
    return stream_k_grid(triton.cdiv(n, block_n), steps, num_sms, per_sm, longest)


def stream_k_grid(tiles: int, steps: int, num_sms: int, per_sm: int,
                  longest: int = 0) -> tuple[int, int]:
    """(programs, most contributors of one tile) of a stream-K launch over tiles x steps units:
    per_sm programs per SM (at most one per unit), more where runs would exceed `longest` units
    (when > 0)."""
    units = tiles * steps
    programs = min(units, num_sms * per_sm)
    if longest > 0:
        programs = max(programs, triton.cdiv(units, longest))
    # every run holds at least units // programs units, so a tile meets at most this many runs
    return programs, triton.cdiv(steps - 1, max(1, units // programs)) + 1


def _tc_split_heuristic(args: dict) -> int:
    return tc_split(args["M"], args["N"], args["K"], args["BLOCK_K"], args["num_sms"],
                    args["split_hint"], args["BLOCK_N"], int(args.get("split_cfg") or 0),
                    bool(args["A8"]))


_gemv_split = triton.heuristics({"SPLIT_K": _split_heuristic})(_gemv_kernel)
_gemm_split = triton.heuristics({"SPLIT_K": _split_heuristic})(_gemm_kernel)


def bench_from_memory(fn, quantiles=None, reps: int = 50):
    """Time fn (one GEMV launch) with its weights in HBM, not L2, and L2 holding clean lines.
    Triton's do_bench empties L2 by zeroing a 256 MB buffer, which leaves it full of dirty lines
    whose write-back then shares HBM with the kernel's own reads. Here L2 is refilled by reading
    a 256 MB buffer before each launch. Returns the median (and the quantiles asked for) in ms.

    Measured on the H200 (benchmarks/h200-quant/run-k): the int4 GEMV's tuned picks timed alone
    improved (per 8B layer, batch 1: 63.6 against 74.7 us, the sweep's best 62.0), but the
    engine tuned this way decoded no faster (377.7 against 377.0 tok/s, one machine): inside the
    decode graphs, under PDL, a kernel timed alone is not the kernel the step waits for. So it
    is an option (KILN_GEMV_TUNE_BENCH=memory), not the default."""
    buf = torch.empty(64 << 20, dtype=torch.float32, device="cuda")  # as do_bench: per call
    total = torch.empty((), dtype=torch.float32, device="cuda")
    fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        torch.sum(buf, dim=0, out=total)  # reads only: evicts the weights, dirties nothing
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = torch.tensor([a.elapsed_time(b) for a, b in zip(starts, ends)])
    med = times.median().item()
    if quantiles is None:
        return med
    return [torch.quantile(times, q).item() for q in quantiles]


def _gemv_bench(fn, quantiles=None):
    """The GEMV autotuner's timer: Triton's do_bench, or bench_from_memory with
    KILN_GEMV_TUNE_BENCH=memory."""
    if os.environ.get("KILN_GEMV_TUNE_BENCH", "triton") == "memory":
        return bench_from_memory(fn, quantiles)
    return triton.testing.do_bench(fn, quantiles=quantiles)


_TUNE_KEY = ["N", "K", "WKIND", "A8", "GROUP", "split_hint", "HAS_BIAS"]


def _gemv_prune(configs, named_args, **kwargs):
    """A forced split (split_hint) leaves out the stream-K candidates, which cut K themselves."""
    return [c for c in configs if not (named_args["split_hint"] > 0 and c.kwargs.get("STREAM_K"))]


_gemv_tuned = triton.autotune(GEMV_CONFIGS, key=_TUNE_KEY + ["BLOCK_M", "FUSED_SPLITK", "INT4_ASM"],
                              prune_configs_by={"early_config_prune": _gemv_prune},
                              do_bench=_gemv_bench)(_gemv_split)
_tc_gemv_split = triton.heuristics({"SPLIT_K": _tc_split_heuristic})(_tc_gemv_kernel)
_tc_gemv_tuned = triton.autotune(TC_GEMV_CONFIGS, key=["N", "K", "A8", "BLOCK_M", "HAS_BIAS",
                                                       "FUSED_SPLITK", "split_hint"],
                                 prune_configs_by={"early_config_prune": _tc_prune})(_tc_gemv_split)
_gemm_tuned = triton.autotune(GEMM_CONFIGS,
                              key=_TUNE_KEY + ["M_BUCKET"],
                              prune_configs_by={"early_config_prune": _gemm_prune})(_gemm_split)


def tuned_kernels() -> dict:
    """The autotuned kernels by name; each one's `.cache` maps tuning keys to chosen configs."""
    return {"gemv": _gemv_tuned, "gemm": _gemm_tuned, "tc_gemv": _tc_gemv_tuned}


def _candidates(name: str) -> list[triton.Config]:
    if name == "tc_gemv":
        return [c for c in TC_GEMV_CONFIGS if tc_stream_k_enabled() or not c.kwargs.get("STREAM_K")]
    return {"gemv": GEMV_CONFIGS}.get(name, GEMM_CONFIGS)


def tc_stream_k_enabled() -> bool:
    """Whether the tensor-core GEMV's stream-K candidates (equal runs of the tiles' K steps per
    program, STREAM_K) may be tuned or taken from an engine's stored tuning (KILN_TC_STREAM_K=1;
    off by default). On the H200 they were 5-20% slower than the split-K candidates at every 8B
    layer, bf16 and fp8, and the 8B batch-1 engines were no faster with them (bf16 233.4 / 233.5
    against 233.5 / 234.8 tok/s, fp8 348.4 against 348.4; benchmarks/h200-quant/run-l)."""
    return os.environ.get("KILN_TC_STREAM_K", "0") == "1"


def _same_config(a: triton.Config, entry: dict) -> bool:
    return (dict(a.kwargs) == dict(entry.get("config", {})) and a.num_warps == entry.get("num_warps")
            and a.num_stages == entry.get("num_stages"))


def export_tuning() -> list[dict]:
    """The autotuners' choices so far, as JSON-ready entries (what `kiln build` stores).

    Each entry: kernel name, the autotuner's cache key (the tuning-key values, then the dtypes of
    the tensor arguments) and the chosen launch configuration.
    """
    entries = []
    for name, kernel in tuned_kernels().items():
        for key, cfg in kernel.cache.items():
            entries.append({"kernel": name, "key": list(key), "config": dict(cfg.kwargs),
                            "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    return entries


def import_tuning(entries: list[dict]) -> int:
    """Seed the autotuners with stored choices, so those shapes run without tuning; returns how
    many were taken. An entry naming an unknown kernel or a configuration that is not one of the
    kernel's candidates is skipped (the autotuner then tunes that shape as usual)."""
    kernels = tuned_kernels()
    taken = 0
    for entry in entries:
        kernel = kernels.get(entry.get("kernel"))
        if kernel is None or not isinstance(entry.get("key"), list):
            continue
        match = next((c for c in _candidates(entry["kernel"]) if _same_config(c, entry)), None)
        if match is None:
            continue
        kernel.cache[tuple(entry["key"])] = match
        taken += 1
    return taken


def autotune_enabled() -> bool:
    """Autotune on CUDA unless KILN_QUANT_AUTOTUNE=0 (then the default configs: fast start-up)."""
    return os.environ.get("KILN_QUANT_AUTOTUNE", "1") != "0"


def fused_splitk_enabled() -> bool:
    """Whether the GEMV sums its own K splits (the default) instead of launching
    _splitk_reduce_kernel after it (KILN_QUANT_FUSED_SPLITK=0). On the H200 the fused reduce took
    8B fp8 batch-1 decode from 228.5 to 265.4 tok/s (benchmarks/h200-quant/)."""
    return os.environ.get("KILN_QUANT_FUSED_SPLITK", "1") == "1"


def fused_act_quant_enabled() -> bool:
    """Whether W8A8 decode GEMVs quantize their activations per token themselves
    (KILN_QUANT_FUSED_ACT=1) instead of after a separate quantization launch. Off by default
    until measured on the H200 (the separate launches took 0.40 ms of a 3.96 ms fp8 step)."""
    return os.environ.get("KILN_QUANT_FUSED_ACT", "0") == "1"


def int4_asm_ok(x2: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the GEMV may read int4 weights as 32-bit words through PTX (CUDA; 4-byte aligned
    rows; KILN_INT4_ASM=0 keeps the nibble-by-nibble path)."""
    return (x2.is_cuda and os.environ.get("KILN_INT4_ASM", "1") == "1" and w.data_ptr() % 4 == 0
            and w.stride(0) % 4 == 0)


def int4_asm_mode(x2: torch.Tensor, w: torch.Tensor) -> int:
    """The GEMV's INT4_ASM for int4 weights that int4_asm_ok admits. Float16 products, two at a
    time, for 16-bit x read as 32-bit words (4-byte aligned rows): over one 32-bit weight word
    per product chain (2: bfloat16 x, 3: float16 x; KILN_INT4_F16=1) or over two, read as 64 bits
    (4 / 5, the default where weight rows are 8-byte aligned; KILN_INT4_F16=2). Otherwise, and
    with KILN_INT4_F16=0, 1: float32 products (_int4_words_f32)."""
    mode = os.environ.get("KILN_INT4_F16", "2")
    if (mode in ("1", "2") and x2.dtype in (torch.bfloat16, torch.float16)
            and x2.data_ptr() % 4 == 0 and x2.stride(0) % 2 == 0 and x2.shape[1] % 16 == 0):
        pair = mode == "2" and w.data_ptr() % 8 == 0 and w.stride(0) % 8 == 0
        return (4 if pair else 2) + (x2.dtype == torch.float16)
    return 1


SPLIT_LOCKS = 16384  # per-device arrival counters, one per GEMV output tile
_MIN_GEMV_BLOCK_N = min([c.kwargs["BLOCK_N"] for c in GEMV_CONFIGS] + [INTERPRET_GEMV["BLOCK_N"]])
_split_locks: dict[torch.device, torch.Tensor] = {}


def prefetch_steps(w: torch.Tensor, step_bytes: int, pdl: dict) -> dict:
    """The GEMVs' PREFETCH launch argument: KILN_GEMV_PREFETCH K steps (tc_gemv) or groups
    (_gemv_kernel) of each program's weight rows are asked into L2 before the kernel waits for
    the one before it, at most KILN_GEMV_PREFETCH_MB MiB over the launch when that is set. Only
    under PDL (otherwise nothing runs before that kernel ends), and only
    where every prefetched row range is 16-byte aligned (the bulk prefetch's rule): the weight's
    address, its row stride, one step's bytes (step_bytes) and its row's bytes."""
    steps = int(os.environ.get("KILN_GEMV_PREFETCH", "0"))
    if steps <= 0 or not pdl.get("PDL"):
        return {}
    row_bytes = w.shape[1] * w.element_size()
    if (w.data_ptr() % 16 or (w.stride(0) * w.element_size()) % 16 or step_bytes % 16
            or row_bytes % 16):
        return {}
    budget = int(os.environ.get("KILN_GEMV_PREFETCH_MB", "0"))
    return {"PREFETCH": steps, **({"PREFETCH_MB": budget} if budget > 0 else {})}


def early_weight_steps(pdl: dict, a8: bool) -> dict:
    """The tensor-core GEMV's EARLY_W launch argument: KILN_GEMV_EARLY_W (0, 1, 2 or 4) K steps of
    each program's weight tiles are loaded into registers before the kernel waits for the one
    before it; unset: 1 for fp8 weights (a8), 0 for float ones. Only under PDL (otherwise
    nothing runs before that kernel ends). On the H200, 8B batch 1 (benchmarks/h200-quant, run-o):
    fp8 350.0 -> 354.5 tok/s with 1 (2 and 4: 315 and 310), bf16 232.8 -> 231.0 with 1."""
    flag = os.environ.get("KILN_GEMV_EARLY_W", "")
    if flag not in ("", "0", "1", "2", "4"):
        raise ValueError(f"KILN_GEMV_EARLY_W={flag!r}: expected 0, 1, 2 or 4")
    steps = int(flag) if flag else (1 if a8 else 0)
    return {"EARLY_W": steps} if steps and pdl.get("PDL") else {}


def split_locks(device: torch.device) -> torch.Tensor | None:
    """The device's zeroed arrival counters (allocated on first use outside graph capture; None
    while capturing before they exist, and the caller then reduces with a separate kernel).
    Shared by the GEMVs' fused split-K and decode attention's fused merge: kernels of one
    stream touch them only after waiting for the kernel before, and re-arm every counter they
    use before they end."""
    locks = _split_locks.get(device)
    if locks is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        locks = _split_locks[device] = torch.zeros(SPLIT_LOCKS, dtype=torch.int32, device=device)
    return locks


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: small, so the CPU tests reach the split-K path
    return torch.cuda.get_device_properties(device).multi_processor_count


def _run(kernel, grid, args: tuple, flags: dict, fixed: triton.Config, tune: bool,
         x2: torch.Tensor, pdl: dict) -> None:
    """Launch kernel (autotuned when tune, else with the fixed configuration; the interpreter
    takes no warps or stages)."""
    if tune:
        kernel[grid](*args, **flags, **pdl)
    elif x2.is_cuda:
        kernel[grid](*args, **flags, **fixed.kwargs, num_warps=fixed.num_warps,
                     num_stages=fixed.num_stages, **pdl)
    else:
        kernel[grid](*args, **flags, **fixed.kwargs)


def _partials(max_split: int, m: int, n: int, out: torch.Tensor, zeroed: bool) -> torch.Tensor:
    """The float32 buffer of up to max_split K-split partials of an [m, n] output (out itself,
    unused, when nothing is split). zeroed: stream-K without the fused reduce leaves no partial
    in the slots of a tile's missing contributors, which must then read as zeros to the reduce."""
    if max_split <= 1:
        return out
    return (torch.zeros if zeroed else torch.empty)(max_split * m * n, dtype=torch.float32,
                                                    device=out.device)


def _reduce_splits(part: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, split: int,
                   pdl: dict) -> None:
    """Sum split's float32 partials [split, M, N] (+ bias) into out with _splitk_reduce_kernel."""
    m, n = out.shape
    block = min(1024, triton.next_power_of_2(n))
    _splitk_reduce_kernel[(m, triton.cdiv(n, block))](
        part, bias if bias is not None else out, out, m, n, out.stride(0),
        SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4, **pdl)


def launch(x2: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, stride_sg: int, group: int,
           wkind: int, bias: torch.Tensor | None, out_dtype: torch.dtype, path: str,
           x_scales: torch.Tensor | None = None, split_k: int = 0,
           quant_x: torch.dtype | None = None, config: triton.Config | None = None,
           row_block: int = 1) -> torch.Tensor:
    """Run one quantized matmul kernel on 2-D x2 [M, K] (row-major); returns [M, N] of out_dtype.

    path: "gemv" (M <= GEMV_MAX_M) or "gemm". x_scales [M, 1] float32 marks a W8A8 call (x2 is
    then the quantized activations). split_k > 0 forces the K split (benchmarks; at most
    MAX_SPLIT_K, and only for M <= SMALL_M). quant_x (float8_e4m3fn or int8, GEMV only) makes a
    W8A8 call on the float activations x2: the GEMV quantizes them per token itself. config (CUDA,
    benchmarks) runs that launch configuration instead of the autotuned or default one.
    row_block > 1 (int4): w holds its rows in blocks of that many (tile_int4_rows). Layers call
    the per-scheme dispatchers below.
    """
    m, k = x2.shape
    n = w.shape[0]
    if path == "gemv" and m > GEMV_MAX_M:
        raise ValueError(f"gemv path takes at most {GEMV_MAX_M} rows, got {m}")
    if split_k and (split_k > MAX_SPLIT_K or m > SMALL_M):
        raise ValueError(f"split_k={split_k} needs split_k <= {MAX_SPLIT_K} and M <= {SMALL_M}")
    if quant_x is not None and (path != "gemv" or x_scales is not None):
        raise ValueError("quant_x is for the GEMV path, on float activations without x_scales")
    a8 = x_scales is not None or quant_x is not None
    sms = _num_sms(x2.device)
    tune = x2.is_cuda and autotune_enabled() and config is None
    flags = dict(WKIND=wkind, A8=a8, GROUP=group, HAS_BIAS=bias is not None)
    if row_block > 1:
        if wkind != W_INT4 or n % row_block:
            raise ValueError(f"row_block {row_block} needs int4 weights with N ({n}) a multiple of it")
        flags["ROW_BLOCK"] = row_block
    locks = None
    if path == "gemv":
        flags["BLOCK_M"] = triton.next_power_of_2(m)
        if fused_splitk_enabled() and triton.cdiv(n, _MIN_GEMV_BLOCK_N) <= SPLIT_LOCKS:
            locks = split_locks(x2.device)
        flags["FUSED_SPLITK"] = locks is not None
        if wkind == W_INT4 and int4_asm_ok(x2, w):
            flags["INT4_ASM"] = int4_asm_mode(x2, w)
        if quant_x is not None:
            flags["QX"] = 2 if quant_x == torch.int8 else 1
            flags["QX_BLOCK"] = min(1024, triton.next_power_of_2(k))
        kernel = _gemv_tuned if tune else _gemv_split
        fixed = config or (GEMV_CONFIGS[DEFAULT_GEMV] if x2.is_cuda else triton.Config(INTERPRET_GEMV))
        candidates = GEMV_CONFIGS if tune else [fixed]
    else:
        flags["M_BUCKET"] = m_bucket(m)
        flags["DOT_PREC"] = "ieee" if x2.dtype == torch.float32 else "tf32"
        kernel = _gemm_tuned if tune else _gemm_split
        pruned = _gemm_prune(GEMM_CONFIGS_BY_BUCKET[flags["M_BUCKET"]], None, **flags)
        fixed = config or (pruned[0] if x2.is_cuda else triton.Config(INTERPRET_GEMM))
        candidates = pruned if tune else [fixed]
    if split_k > 0 and path == "gemv" and fixed.kwargs.get("STREAM_K") and not tune:
        raise ValueError("a stream-K configuration cuts K itself: it takes no split_k")

    def shape(c: dict) -> tuple[int, int]:
        """(programs along N, K splits or most contributors per tile) of configuration kwargs c."""
        block_m = c.get("BLOCK_M") if path == "gemm" else None
        if c.get("STREAM_K"):  # (GEMV only) programs, in a grid (programs, 1)
            return stream_k_grid(triton.cdiv(n, c["BLOCK_N"]), triton.cdiv(k, group), sms,
                                 c["STREAM_K"])
        tiles_m = 1 if block_m is None else triton.cdiv(m, block_m)
        return (tiles_m * triton.cdiv(n, c["BLOCK_N"]),
                split_for(m, n, k, group, sms, split_k, c["BLOCK_N"], block_m,
                          int(c.get("split_cfg") or 0) if path == "gemv" else 0))

    # Partials for a K split, sized for the largest split any candidate config may choose.
    max_split = max(max(shape(c.kwargs)[1] for c in candidates), 1)
    out = torch.empty(m, n, dtype=out_dtype, device=x2.device)
    part = _partials(max_split, m, n, out, locks is None and any(c.kwargs.get("STREAM_K")
                                                                 for c in candidates))
    chosen = {}
    pdl = pdl_args(x2)
    if path == "gemv" and row_block == 1:  # (the L2 prefetch reads row-major weights)
        flags.update(prefetch_steps(w, group * w.element_size() // (2 if wkind == W_INT4 else 1), pdl))
    has_bias = bias is not None
    args = (x2, x_scales if x_scales is not None else x2, w, scales, bias if has_bias else out, out, part,
            *((locks if locks is not None else out,) if path == "gemv" else ()),
            m, n, k, x2.stride(0), w.stride(0), scales.stride(0), stride_sg, out.stride(0),
            sms, split_k)

    def grid(meta):
        # Called with the final meta-parameters of each launch (the last call is the real one).
        # (Recomputed rather than read from meta: the interpreter hands over wrapped values.)
        width, chosen["split"] = shape(meta)
        return (width, 1) if meta.get("STREAM_K") else (width, chosen["split"])

    _run(kernel, grid, args, flags, fixed, tune, x2, pdl)
    split = chosen["split"]
    assert split <= max_split, "partial buffer sized for fewer splits than the kernel used"
    if split > 1 and locks is None:
        _reduce_splits(part, bias, out, split, pdl)
    return out


# --------------------------------------------------------------------------------- dispatchers

def _rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as a row-major [M, K] view (copying only when needed)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _check(x: torch.Tensor, k: int, what: str) -> None:
    """Reject an x that does not fit the weight (K) or is not a float activation."""
    if x.shape[-1] != k:
        raise ValueError(f"{what}: x has K={x.shape[-1]} but the weight expects {k}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{what}: x must be float16/bfloat16/float32, got {x.dtype}")


TC_GEMV_MAX_M = 16     # rows the tensor-core int4 product takes (one BLOCK_M = 16 tile)
TC_GEMV_BLOCK_N = 64


def int4_tc_enabled() -> bool:
    """Whether int4 decode rows (up to GEMV_MAX_M) take the tensor-core kernel instead of the FMA
    GEMV (KILN_INT4_TC=1). Off by default until measured on the H200."""
    return os.environ.get("KILN_INT4_TC", "0") == "1"


def int4_tc_gemv(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group: int,
                 bias: torch.Tensor | None, out_dtype: torch.dtype, split_k: int = 0,
                 block_n: int = TC_GEMV_BLOCK_N, num_warps: int = 4,
                 num_stages: int = 3, one_dot: bool = True) -> torch.Tensor:
    """int4 weight-only x2 [M <= 16, K] @ dequant(qweight, scales).T on the tensor cores
    (_int4_tc_gemv_kernel): float16/bfloat16 x, K groups of 128 (the dots need K >= 16 per
    nibble position). split_k 0 picks the split as the GEMV does. one_dot (the default) puts each
    group's weights back in k order for one dot; False keeps eight dots, one per nibble position,
    whose x slices the compiler stages one by one (compile_sm90.py: a barrier each)."""
    m, k = x2.shape
    n = qweight.shape[0]
    if m > TC_GEMV_MAX_M or group != 128 or x2.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"int4_tc_gemv takes up to {TC_GEMV_MAX_M} float16/bfloat16 rows and "
                         f"groups of 128, got {m} {x2.dtype} rows, group {group}")
    if qweight.stride(0) % 4 or qweight.data_ptr() % 4:
        raise ValueError("int4_tc_gemv reads the packed weights as 32-bit words: rows must be "
                         "4-byte aligned")
    groups = k // group
    split = split_k or pick_split_k(triton.cdiv(n, block_n), groups, _num_sms(x2.device))
    split = max(1, min(split, groups, MAX_SPLIT_K))
    out = torch.empty(m, n, dtype=out_dtype, device=x2.device)
    part = torch.empty(split * m * n, dtype=torch.float32, device=x2.device) if split > 1 else out
    has_bias = bias is not None
    launch_opts = dict(num_warps=num_warps, num_stages=num_stages) if x2.is_cuda else {}
    _int4_tc_gemv_kernel[(triton.cdiv(n, block_n), split)](
        x2, qweight, scales, bias if has_bias else out, out, part, m, n, k, x2.stride(0),
        qweight.stride(0), scales.stride(0), scales.stride(1), out.stride(0), split,
        GROUP=group, BLOCK_N=block_n, BLOCK_M=16, HAS_BIAS=has_bias,
        X_BF16=x2.dtype == torch.bfloat16, ASM=x2.is_cuda, ONE_DOT=one_dot, **launch_opts,
        **pdl_args(x2))
    if split > 1:
        _reduce_splits(part, bias, out, split, pdl_args(x2))
    return out


def tc_gemv_enabled(kind: str) -> bool:
    """Whether decode rows (up to SMALL_M) of kind "fp8" (W8A8) or "float" (unquantized
    float16/bfloat16 weights) take the tensor-core GEMV (tc_gemv). KILN_TC_GEMV=1 (the default)
    turns both on, =fp8 or =float one, =0 none. On the H200, 8B batch-1 decode: fp8 270.7 ->
    298.3 tok/s, bf16 220.3 -> 225.9 (benchmarks/h200-quant/README.md, run-g)."""
    flag = os.environ.get("KILN_TC_GEMV", "1")
    return flag == "1" or flag == kind


def tc_gemv_ok(x2: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether tc_gemv takes this product: at most SMALL_M rows, fp8 weights with fp8 codes or
    float16/bfloat16 weights with x of their dtype, K a multiple of 32 (one fp8 dot step)."""
    if x2.shape[0] > SMALL_M or w.shape[1] % 32:
        return False
    if w.dtype == torch.float8_e4m3fn:
        return x2.dtype == torch.float8_e4m3fn
    return w.dtype in (torch.float16, torch.bfloat16) and x2.dtype == w.dtype


def tc_gemv(x2: torch.Tensor, x_scales: torch.Tensor | None, w: torch.Tensor,
            w_scales: torch.Tensor | None, bias: torch.Tensor | None, out_dtype: torch.dtype,
            split_k: int = 0, config: triton.Config | None = None) -> torch.Tensor:
    """x2 [M <= SMALL_M, K] @ w [N, K].T on the tensor cores (_tc_gemv_kernel), float32
    accumulation; returns [M, N] of out_dtype. W8A8: x2 holds fp8 codes with per-token scales
    x_scales [M, 1] and w fp8 with per-channel w_scales [N]; otherwise x2 and w are float16 or
    bfloat16 and both scales are None. split_k > 0 forces the K split and config (CUDA) a launch
    configuration (benchmarks); else the autotuned one (or the first candidate)."""
    m, k = x2.shape
    n = w.shape[0]
    a8 = x_scales is not None
    if not tc_gemv_ok(x2, w) or a8 != (w_scales is not None) or a8 != (w.dtype == torch.float8_e4m3fn):
        raise ValueError(f"tc_gemv takes up to {SMALL_M} rows with K a multiple of 32: fp8 codes "
                         f"and weights with both scales, or float16/bfloat16 of one dtype without; "
                         f"got x {tuple(x2.shape)} {x2.dtype}, w {tuple(w.shape)} {w.dtype}")
    if split_k > MAX_SPLIT_K:
        raise ValueError(f"split_k={split_k} needs split_k <= {MAX_SPLIT_K}")
    if split_k > 0 and config is not None and config.kwargs.get("STREAM_K"):
        raise ValueError("a stream-K configuration cuts K itself: it takes no split_k")
    sms = _num_sms(x2.device)
    tune = x2.is_cuda and autotune_enabled() and config is None
    kind_configs = TC_GEMV_CONFIGS_FP8 if a8 else TC_GEMV_CONFIGS_FLOAT
    fixed = config or (kind_configs[0] if x2.is_cuda else triton.Config(INTERPRET_TC_GEMV))
    candidates = kind_configs if tune else [fixed]

    def shape(c: dict) -> tuple[int, int]:
        """(grid width, K splits or most contributors per tile) of configuration kwargs c."""
        if c.get("STREAM_K"):
            return tc_stream_k(n, k, c["BLOCK_N"], c["BLOCK_K"], sms, c["STREAM_K"], a8)
        return (triton.cdiv(n, c["BLOCK_N"]),
                tc_split(m, n, k, c["BLOCK_K"], sms, split_k, c["BLOCK_N"],
                         int(c.get("split_cfg") or 0), a8))

    max_split = max(max(shape(c.kwargs)[1] for c in candidates), 1)
    locks = None
    if max_split > 1 and fused_splitk_enabled() and triton.cdiv(n, 16) <= SPLIT_LOCKS:
        locks = split_locks(x2.device)
    out = torch.empty(m, n, dtype=out_dtype, device=x2.device)
    part = _partials(max_split, m, n, out, locks is None and any(c.kwargs.get("STREAM_K")
                                                                 for c in candidates))
    has_bias = bias is not None
    chosen = {}

    def grid(meta):
        width, chosen["split"] = shape(meta)
        return (width, 1) if meta.get("STREAM_K") else (width, chosen["split"])

    args = (x2, x_scales if a8 else x2, w, w_scales if a8 else w, bias if has_bias else out, out,
            part, locks if locks is not None else out, m, n, k, x2.stride(0), w.stride(0),
            out.stride(0), sms, split_k)
    flags = dict(A8=a8, HAS_BIAS=has_bias, FUSED_SPLITK=locks is not None, BLOCK_M=16)
    pdl = pdl_args(x2)
    # every candidate's K step (BLOCK_K >= 32 elements, one byte or more each) is a multiple of
    # 32 bytes
    flags.update(prefetch_steps(w, 32, pdl))
    flags.update(early_weight_steps(pdl, a8))
    _run(_tc_gemv_tuned if tune else _tc_gemv_split, grid, args, flags, fixed, tune, x2, pdl)
    split = chosen["split"]
    assert split <= max_split, "partial buffer sized for fewer splits than the kernel used"
    if split > 1 and locks is None:
        _reduce_splits(part, bias, out, split, pdl)
    return out


def tile_int4_rows(qweight: torch.Tensor, row_block: int, group_size: int) -> torch.Tensor:
    """Packed int4 weights [N, K // 2] (row-major) -> the same shape holding its rows in blocks
    of row_block: [N / row_block, K / group, row_block, group / 2] bytes, so that one group of a
    block's rows is one contiguous run (row_block * group / 2 bytes) for the GEMV to stream."""
    n, half = qweight.shape
    g = group_size // 2
    if n % row_block or half % g:
        raise ValueError(f"tile_int4_rows: N {n} / K {2 * half} do not fit blocks of {row_block} "
                         f"rows and groups of {group_size}")
    return (qweight.reshape(n // row_block, row_block, half // g, g).permute(0, 2, 1, 3)
            .contiguous().reshape(n, half))


def untile_int4_rows(tiled: torch.Tensor, row_block: int, group_size: int) -> torch.Tensor:
    """The inverse of tile_int4_rows: row-major packed int4 weights [N, K // 2]."""
    n, half = tiled.shape
    g = group_size // 2
    return (tiled.reshape(n // row_block, half // g, row_block, g).permute(0, 2, 1, 3)
            .contiguous().reshape(n, half))


def int4_row_block(n: int, group_size: int) -> int:
    """Rows per block for the int4 GEMV's blocked weight layout (tile_int4_rows) of an N-row
    layer: KILN_INT4_ROW_BLOCK (0 or unset: 1, row-major) where it divides N, else 1. Layers on
    the Triton path tile their weights once loaded (kiln.quant.int4's finish_loading)."""
    block = int(os.environ.get("KILN_INT4_ROW_BLOCK", "0") or 0)
    return block if block > 1 and n % block == 0 and group_size % 16 == 0 else 1


def int4_wo_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                   bias: torch.Tensor | None = None, row_block: int = 1) -> torch.Tensor:
    """int4 weight-only linear (dispatcher): x [..., K] @ dequant(qweight [N, K//2], scales).T + bias.
    row_block > 1: qweight holds its rows in blocks of that many (tile_int4_rows)."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    _check(x, k, "int4_wo_linear")
    if group_size not in (32, 64, 128) or k % group_size or scales.shape != (n, k // group_size):
        raise ValueError(f"int4_wo_linear: group_size {group_size} / scales {tuple(scales.shape)} "
                         f"do not fit K={k}, N={n}")
    if not use_triton(x) or x.numel() == 0:
        if row_block > 1:
            qweight = untile_int4_rows(qweight, row_block, group_size)
        return int4_wo_linear_ref(x, qweight, scales, group_size, bias)
    x2 = _rows(x)
    s = scales.float().contiguous()
    qweight = qweight.contiguous()
    if (x2.shape[0] <= GEMV_MAX_M and int4_tc_enabled() and group_size == 128 and row_block == 1
            and x.dtype in (torch.float16, torch.bfloat16) and qweight.stride(0) % 4 == 0
            and qweight.data_ptr() % 4 == 0):
        return int4_tc_gemv(x2, qweight, s, group_size, bias, x.dtype).reshape(*x.shape[:-1], n)
    path = "gemv" if x2.shape[0] <= GEMV_MAX_M else "gemm"
    out = launch(x2, qweight, s, s.stride(1), group_size, W_INT4, bias, x.dtype, path,
                 row_block=row_block)
    return out.reshape(*x.shape[:-1], n)


def int8_wo_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """int8 weight-only linear (dispatcher): x [..., K] @ (qweight [N, K] * scales[:, None]).T + bias."""
    n, k = qweight.shape
    _check(x, k, "int8_wo_linear")
    if not use_triton(x) or x.numel() == 0:
        return int8_wo_linear_ref(x, qweight, scales, bias)
    x2 = _rows(x)
    path = "gemv" if x2.shape[0] <= GEMV_MAX_M else "gemm"
    # The kernels read int8 weights as their uint8 bits (see _bytes_f32); the view is free.
    out = launch(x2, qweight.contiguous().view(torch.uint8), scales.float().contiguous(), 0, KTILE_8BIT,
                 W_INT8_U, bias, x.dtype, path)
    return out.reshape(*x.shape[:-1], n)


def scaled_mm_supported(x2: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch._scaled_mm (row-wise fp8) can run this product: sm89+, K and N multiples of 16."""
    if not x2.is_cuda or not hasattr(torch, "_scaled_mm"):
        return False
    n, k = weight.shape
    return torch.cuda.get_device_capability(x2.device) >= (8, 9) and k % 16 == 0 and n % 16 == 0


def fp8_scaled_mm(x2: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype,
                  fast_accum: bool | None = None) -> torch.Tensor:
    """fp8 W8A8 through torch._scaled_mm with row-wise scales (CUDA, sm89+); x2 [M, K] -> [M, N].

    Rows are padded to a multiple of 16 for cuBLASLt/CUTLASS; row-wise scaling returns bfloat16
    (the only output type torch accepts with it), cast to out_dtype afterwards. fast_accum uses
    the tensor cores' reduced-precision fp8 accumulation (None: KILN_FP8_FAST_ACCUM decides).
    """
    xq, sx = quant_per_token(x2, torch.float8_e4m3fn, pad_rows_to=16)
    return _scaled_mm_rows(xq, sx, x2.shape[0], weight, weight_scale, bias, out_dtype, fast_accum)


def fp8_fast_accum_enabled() -> bool:
    """Whether torch._scaled_mm accumulates fp8 products in the tensor cores' own accumulator
    (use_fast_accum) instead of promoting partial sums to float32 every few K steps: the default
    (the fp8 8B engine's 1000 x 128/128 throughput +7% on the H200, the demo model's fp8 top-1
    agreement 97.73% against 97.78%; benchmarks/h200-quant run-r). KILN_FP8_FAST_ACCUM=0 promotes."""
    return os.environ.get("KILN_FP8_FAST_ACCUM", "1") != "0"


def _scaled_mm_rows(xq: torch.Tensor, sx: torch.Tensor, m: int, weight: torch.Tensor,
                    weight_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                    fast_accum: bool | None = None) -> torch.Tensor:
    """torch._scaled_mm of fp8 codes xq [R, K] (R a multiple of 16, scales sx [R, 1]); the first
    m rows of the product (+ bias) in out_dtype. fast_accum None follows KILN_FP8_FAST_ACCUM."""
    if fast_accum is None:
        fast_accum = fp8_fast_accum_enabled()
    fused_bias = bias if bias is not None and bias.dtype == torch.bfloat16 else None
    y = torch._scaled_mm(xq, weight.t(), scale_a=sx, scale_b=weight_scale.float().reshape(1, -1),
                         bias=fused_bias, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)
    y = y[:m]
    if bias is not None and fused_bias is None:
        return (y.float() + bias.float()).to(out_dtype)
    return y if out_dtype == torch.bfloat16 else y.to(out_dtype)


def _fp8_linear_prequantized(x, weight: torch.Tensor, weight_scale: torch.Tensor,
                             bias: torch.Tensor | None) -> torch.Tensor:
    """fp8_linear of activations their producer already quantized (quant_act.QuantizedRows)."""
    n, k = weight.shape
    if x.shape[-1] != k or x.q.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_linear: quantized x has K={x.shape[-1]} of {x.q.dtype}, the weight "
                         f"expects K={k} of float8_e4m3fn")
    m = x.m
    xq, sx = x.q, x.scale
    if not use_triton(xq) or m == 0:
        y = _fp8_product_ref(xq[:m], sx[:m], weight, weight_scale)
        out = (y if bias is None else y + bias.float()).to(x.dtype)
    elif m > SMALL_M and scaled_mm_supported(xq, weight) and xq.shape[0] % 16 == 0:
        out = _scaled_mm_rows(xq, sx, m, weight.contiguous(), weight_scale, bias, x.dtype)
    elif tc_gemv_enabled("fp8") and tc_gemv_ok(xq[:m], weight):
        out = tc_gemv(xq[:m], sx[:m], weight.contiguous(), weight_scale.float().contiguous(), bias,
                      x.dtype)
    else:
        path = "gemv" if m <= GEMV_MAX_M else "gemm"
        out = launch(xq[:m], weight.contiguous(), weight_scale.float().contiguous(), 0, KTILE_8BIT,
                     W_FP8, bias, x.dtype, path, x_scales=sx[:m])
    return out.reshape(*x.shape[:-1], n)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp8 W8A8 linear (dispatcher): per-token fp8 activations times fp8 weights [N, K] (+ bias).

    M <= SMALL_M: the tensor-core GEMV (KILN_TC_GEMV, the default), else the Triton GEMV
    (M <= GEMV_MAX_M) or fp8 tl.dot with split-K; larger M: torch._scaled_mm where supported
    (else the Triton GEMM). x may also be a
    quant_act.QuantizedRows (its producer quantized it): the same products, no quantization here.
    """
    from kiln.kernels.quant_act import QuantizedRows

    if isinstance(x, QuantizedRows):
        return _fp8_linear_prequantized(x, weight, weight_scale, bias)
    n, k = weight.shape
    _check(x, k, "fp8_linear")
    if not use_triton(x) or x.numel() == 0:
        return fp8_linear_ref(x, weight, weight_scale, bias)
    x2 = _rows(x)
    m = x2.shape[0]
    weight = weight.contiguous()
    ws = weight_scale.float().contiguous()
    if m > SMALL_M and scaled_mm_supported(x2, weight):
        out = fp8_scaled_mm(x2, weight, ws, bias, x.dtype)
    elif m <= GEMV_MAX_M and fused_act_quant_enabled():
        out = launch(x2, weight, ws, 0, KTILE_8BIT, W_FP8, bias, x.dtype, "gemv",
                     quant_x=torch.float8_e4m3fn)
    elif m <= SMALL_M and tc_gemv_enabled("fp8") and k % 32 == 0:
        xq, sx = quant_per_token(x2, torch.float8_e4m3fn)
        out = tc_gemv(xq, sx, weight, ws, bias, x.dtype)
    else:
        xq, sx = quant_per_token(x2, torch.float8_e4m3fn)
        path = "gemv" if m <= GEMV_MAX_M else "gemm"
        out = launch(xq, weight, ws, 0, KTILE_8BIT, W_FP8, bias, x.dtype, path, x_scales=sx)
    return out.reshape(*x.shape[:-1], n)


def triton_gemv_enabled() -> bool:
    """Whether unquantized layers run rows <= GEMV_MAX_M through the Triton GEMV instead of
    cuBLAS (KILN_TRITON_GEMV=1). Off by default until measured on the H200."""
    return os.environ.get("KILN_TRITON_GEMV", "0") == "1"


def float_gemv_linear(x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight [N, K].T (+ bias) for at most GEMV_MAX_M rows through the Triton GEMV
    (float32 accumulation, like the quantized GEMVs), or up to SMALL_M rows through tc_gemv
    when KILN_TC_GEMV names float; more rows or no Triton: F.linear."""
    n, k = weight.shape
    _check(x, k, "float_gemv_linear")
    x2 = _rows(x)
    if not use_triton(x) or x.numel() == 0 or x2.shape[0] > SMALL_M:
        return torch.nn.functional.linear(x, weight, bias)
    weight = weight.contiguous()
    if tc_gemv_enabled("float") and tc_gemv_ok(x2, weight):
        return tc_gemv(x2, None, weight, None, bias, x.dtype).reshape(*x.shape[:-1], n)
    if x2.shape[0] > GEMV_MAX_M:
        return torch.nn.functional.linear(x, weight, bias)
    # W_FLOAT reads no scales: the weight itself stands in for the scales argument.
    out = launch(x2, weight, weight, 0, KTILE_8BIT, W_FLOAT, bias, x.dtype, "gemv")
    return out.reshape(*x.shape[:-1], n)


def int8_sq_int_mm(x2: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """int8 W8A8 through torch._int_mm (CUDA: needs M > 16, K and N multiples of 8), torch epilogue.

    An alternative to the Triton GEMM, kept for the benchmark's comparison.
    """
    xq, sx = quant_per_token(x2, torch.int8)
    acc = torch._int_mm(xq, weight.t())
    y = acc.float() * sx * weight_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def int8_sq_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """int8 W8A8 (SmoothQuant) linear (dispatcher): per-token int8 activations, int8 weights [N, K].

    M <= GEMV_MAX_M: Triton GEMV (float32 FMAs); otherwise the Triton int8 tl.dot GEMM (int32
    accumulation, scales and bias in the epilogue).
    """
    n, k = weight.shape
    _check(x, k, "int8_sq_linear")
    if not use_triton(x) or x.numel() == 0:
        return int8_sq_linear_ref(x, weight, weight_scale, bias)
    x2 = _rows(x)
    m = x2.shape[0]
    weight = weight.contiguous()
    ws = weight_scale.float().contiguous()
    if m <= GEMV_MAX_M and fused_act_quant_enabled():
        out = launch(x2, weight.view(torch.uint8), ws, 0, KTILE_8BIT, W_INT8_U, bias, x.dtype, "gemv",
                     quant_x=torch.int8)
    elif m <= GEMV_MAX_M:
        xq, sx = quant_per_token(x2, torch.int8)
        out = launch(xq, weight.view(torch.uint8), ws, 0, KTILE_8BIT, W_INT8_U, bias, x.dtype, "gemv",
                     x_scales=sx)
    else:
        xq, sx = quant_per_token(x2, torch.int8)
        out = launch(xq, weight, ws, 0, KTILE_8BIT, W_INT8, bias, x.dtype, "gemm", x_scales=sx)
    return out.reshape(*x.shape[:-1], n)
