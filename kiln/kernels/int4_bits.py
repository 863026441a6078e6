"""int4 weights inside the kernels: nibbles to numbers (plain Triton, or PTX that converts two
values an instruction), the float16 word dots of the FMA GEMV, and the blocked row layout
(tile_int4_rows) that the GEMV and GEMM can read instead of row-major weights.

Packed layout: uint8 [N, K // 2], byte j of row n holding k = 2j (low nibble) and 2j + 1 (high
nibble) as q + 8, q in [-8, 7]; read as 32-bit words, word j holds k = 8j + i at bits 4i.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _int4_rows(offs_n, stride_wn, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """Byte offset of each row's group 0 in int4 weights stored in blocks of ROW_BLOCK rows
    (tile_int4_rows): [N / ROW_BLOCK, K / GROUP, ROW_BLOCK, GROUP / 2] bytes, so that group g of
    a block's rows is one run of ROW_BLOCK * GROUP / 2 bytes, at g * ROW_BLOCK * GROUP / 2."""
    n = offs_n.to(tl.int64)
    return (n // ROW_BLOCK) * (ROW_BLOCK * stride_wn) + (n % ROW_BLOCK) * (GROUP // 2)


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


def int4x8_bf16_128_ptx(src: str, dst: str) -> str:
    """PTX (sm_90+) turning the eight nibbles of 32-bit register src (nibble i at bits 4 i) into
    four bfloat16 pairs 128 + nibble, exact: register dst<s> (declared by the caller) gets nibbles
    s (low half) and s + 4 (high half). Each nibble is OR'd into bfloat16 128.0 (0x4300) by one
    lop3 after a shift: 3 shifts and 4 lop3 for 8 weights."""
    shifts = "".join(f"shr.u32 {dst}{s}, {src}, {4 * s};\n" for s in (1, 2, 3))
    ors = "".join(f"lop3.b32 {dst}{s}, {src if s == 0 else dst + str(s)}, 0x000F000F, 0x43004300, "
                  "0xEA;\n" for s in range(4))
    return shifts + ors


# Eight int4 nibbles of a 32-bit word $8 (stored as q + 8) -> four bfloat16 pairs q = nibble - 8,
# exact: kq<s> holds nibbles s and s + 4 as 128 + nibble (int4x8_bf16_128_ptx), and one packed FMA
# takes 136 off both halves. _INT4_WORD_ASM appends its moves out of kq0..kq3 and closes the
# block.
_INT4X8_BF16_PAIRS_PTX = """
{
.reg .b32 kq0, kq1, kq2, kq3, kone, koff;
mov.b32 kone, 0x3F803F80;
mov.b32 koff, 0xC308C308;
""" + int4x8_bf16_128_ptx("$8", "kq") + """fma.rn.bf16x2 kq0, kq0, kone, koff;
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


INT4_ROW_BLOCK = 16  # the default: 8B int4-wo batch 1 382.0 -> 403.7 tok/s on the H200 (run-z)


def int4_row_block(n: int, group_size: int) -> int:
    """Rows per block for the int4 GEMV's blocked weight layout (tile_int4_rows) of an N-row
    layer: KILN_INT4_ROW_BLOCK (unset: INT4_ROW_BLOCK; 0 or 1: row-major) where it divides N,
    else 1. Layers on the Triton path tile their weights once loaded (kiln.quant.int4's
    finish_loading). On the H200 the 8B int4-wo engine at batch 1 decoded 403.7 / 403.3 tok/s
    with blocks of 16 against 382.0 / 382.1 row-major, alternating on one machine
    (benchmarks/h200-quant/README.md, run-z)."""
    flag = os.environ.get("KILN_INT4_ROW_BLOCK", "")
    block = int(flag) if flag else INT4_ROW_BLOCK
    return block if block > 1 and n % block == 0 and group_size % 16 == 0 else 1
