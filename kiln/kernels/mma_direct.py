"""fp8 W8A8 and bfloat16 products of a few rows (M <= 8, decode) on the tensor cores straight from
registers (KILN_MMA_DIRECT; off by default: on the H100 the 8B chain is slower than tc_gemv in
fp8 and ties it in bf16, benchmarks/h200-mma-int4).

The weights are stored once more, in the order of mma.sync's A fragments (pack_mma_direct): for a
tile of 16 rows and one mma step (fp8: m16n8k32, bfloat16: m16n8k16), lane l's 16 bytes are
exactly its fragment's four registers, so a thread's 16-byte load goes from memory to registers
and from there to the tensor cores: no shared memory (and for bfloat16 no conversion). x is the B operand:
column c of B is row c of x (zero for c >= M), so lane (g, t) reads row g. The k order inside a
chunk of 8 steps (256 k of fp8, 128 of bfloat16: 256 bytes of a row either way) is permuted the
same way on both sides, so that lane (g, t) reads its x as one run of 16 words a chunk.

fp8: x is the per-token fp8 codes with float32 scales [M] (what the engine's W8A8 layers use), the
float32 sums are scaled by the weight row's scale and x row's at the end. The products are exact
and summed in float32 by the tensor cores. sm_90 has no fp8 mma.sync of its own: ptxas lowers
each m16n8k32 e4m3 to fp8 -> f16 conversions of A and B (exact) and two m16n8k16 f16 mmas whose
sums it adds to the accumulator with FADDs. cvt=True writes that lowering out instead (_MMA_FP8_CVT):
the same conversions, with the two f16 mmas accumulating into the sums themselves, no FADDs.

Grid: (N / 16 R row blocks, K splits). A program's warps take consecutive chunks of its split;
their sums meet in shared memory; a split program stores float32 partials and the last of a
block's programs to arrive sums them in split order (qmm_common's fused split-K scheme: no second
kernel; the same bits on every run) and writes out[M, N] with the bias.
"""

from __future__ import annotations

import os

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from kiln.kernels import pdl_args
from kiln.kernels.mma_int4 import _finish, _split, _split_buffers, _step, _step_words, _sum_splits
from kiln.kernels.pdl import pdl_start_gluon
from kiln.kernels.qmm_common import _num_sms

MMA_DIRECT_MAX_M = 8   # B's columns
MMA_DIRECT_CHUNK_BYTES = 256  # of a row, a chunk (8 mma steps)
MMA_DIRECT_R = 2       # 16-row tiles a warp
MMA_DIRECT_WARPS = 4
MMA_DIRECT_PER_SM = 4
_STEPS = gl.constexpr(8)

# D = A B + C, pack 4: $0..$3 D, $4..$7 the A words, $8 $9 the B words ($10 $11 unused), $12..$15 C
_MMA_FP8 = gl.constexpr("""
mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32
  {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$12, $13, $14, $15};
""")
# The same product as two m16n8k16 f16 mmas on the converted registers, chained through the sums.
# A register i of the e4m3 fragment holds k 4t..4t+3 (+16 for i >= 2) of row g (+8 for odd i), its
# low half k 4t, 4t+1. In an f16 fragment, register 0/1 holds k 2t, 2t+1 and register 2/3 k 2t+8,
# 2t+9 (rows as above); B likewise (b0 k 4t.., b1 k 16+4t..; f16: k 2t.. and 2t+8..). So the low
# halves go to the f16 mma's k 2t, 2t+1 and the high halves to its k 2t+8, 2t+9, on both sides: the
# mma pairs the same products as the e4m3 one, in another k order.
_MMA_FP8_CVT = gl.constexpr("""
{
.reg .b16 l<6>, h<6>;
.reg .b32 a<8>, b<4>;
mov.b32 {l0, h0}, $4;
mov.b32 {l1, h1}, $5;
mov.b32 {l2, h2}, $6;
mov.b32 {l3, h3}, $7;
mov.b32 {l4, h4}, $8;
mov.b32 {l5, h5}, $9;
cvt.rn.f16x2.e4m3x2 a0, l0;
cvt.rn.f16x2.e4m3x2 a1, l1;
cvt.rn.f16x2.e4m3x2 a2, h0;
cvt.rn.f16x2.e4m3x2 a3, h1;
cvt.rn.f16x2.e4m3x2 a4, l2;
cvt.rn.f16x2.e4m3x2 a5, l3;
cvt.rn.f16x2.e4m3x2 a6, h2;
cvt.rn.f16x2.e4m3x2 a7, h3;
cvt.rn.f16x2.e4m3x2 b0, l4;
cvt.rn.f16x2.e4m3x2 b1, h4;
cvt.rn.f16x2.e4m3x2 b2, l5;
cvt.rn.f16x2.e4m3x2 b3, h5;
mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
  {$0, $1, $2, $3}, {a0, a1, a2, a3}, {b0, b1}, {$12, $13, $14, $15};
mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
  {$0, $1, $2, $3}, {a4, a5, a6, a7}, {b2, b3}, {$0, $1, $2, $3};
}
""")
_MMA_BF16 = gl.constexpr("""
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$12, $13, $14, $15};
""")


def mma_direct_enabled(kind: str) -> bool:
    """Whether layers of kind "fp8" (W8A8) or "float" (bfloat16 weights) keep a copy of their
    weights in the A-fragment order and take _mma_direct_kernel for up to MMA_DIRECT_MAX_M rows:
    KILN_MMA_DIRECT=1 both, =fp8 or =float one, 0 (the default) none. Off: the 8B's 129 GEMVs on
    the H100 take 3.007 ms against tc_gemv's 2.828 (fp8) and 5.221 against 5.261 (bf16)
    (benchmarks/h200-mma-int4, 2026-12-06); the H200 has not run it."""
    flag = os.environ.get("KILN_MMA_DIRECT", "0")
    return flag == "1" or flag == kind


def _per_word(dtype: torch.dtype) -> int:
    if dtype == torch.float8_e4m3fn:
        return 4
    if dtype == torch.bfloat16:
        return 2
    raise ValueError(f"mma_direct takes float8_e4m3fn or bfloat16 weights, not {dtype}")


def chunk_k(dtype: torch.dtype) -> int:
    """k a chunk: 256 (fp8) or 128 (bfloat16)."""
    return MMA_DIRECT_CHUNK_BYTES // (4 // _per_word(dtype))


def mma_direct_ok(n: int, k: int, dtype: torch.dtype, r: int = MMA_DIRECT_R) -> bool:
    """Whether an [N, K] weight of dtype fits the kernel: N a multiple of 16 r, K of a chunk."""
    if dtype not in (torch.float8_e4m3fn, torch.bfloat16):
        return False
    return n % (16 * r) == 0 and k % chunk_k(dtype) == 0


def pack_mma_direct(w: torch.Tensor, r: int = MMA_DIRECT_R) -> torch.Tensor:
    """Row-major weights [N, K] (float8_e4m3fn or bfloat16) -> int32 words
    [N / 16r, K / chunk, 8, 32, r, 4] in _mma_direct_kernel's order.

    Word reg of (block, chunk c, step s, lane 4 g + t, tile j), E values a word (4 fp8, 2 bf16),
    rows a = 16 j + g and b = a + 8 of the block, k0 = c chunk + 16 E t + 2 E s: reg 0 is row a at
    k0 .. k0 + E, reg 1 row b there, reg 2 row a at k0 + E .. k0 + 2E, reg 3 row b there (the
    fragment's a0..a3 registers, under the k permutation that x shares)."""
    e = _per_word(w.dtype)
    n, k = w.shape
    ck = chunk_k(w.dtype)
    if not mma_direct_ok(n, k, w.dtype, r):
        raise ValueError(f"pack_mma_direct: [N={n}, K={k}] needs N a multiple of {16 * r} and K "
                         f"of {ck}")
    raw = w.contiguous().view(torch.uint8 if e == 4 else torch.int16)
    # rows (block, j, h, g); k (chunk, t, s, half, e)
    v = raw.reshape(n // (16 * r), r, 2, 8, k // ck, 4, 8, 2, e)
    # -> (block, chunk, s, g, t, j, half, h, e): reg = 2 half + h
    v = v.permute(0, 4, 6, 3, 5, 1, 7, 2, 8).contiguous()
    return v.view(torch.int32).reshape(n // (16 * r), k // ck, 8, 32, r, 4)


def unpack_mma_direct(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of pack_mma_direct: [N, K] of dtype, row-major."""
    e = _per_word(dtype)
    blocks, chunks, _, _, r, _ = words.shape
    v = words.contiguous().view(torch.uint8 if e == 4 else torch.int16)
    v = v.reshape(blocks, chunks, 8, 8, 4, r, 2, 2, e)  # (block, chunk, s, g, t, j, half, h, e)
    v = v.permute(0, 5, 7, 3, 1, 4, 2, 6, 8)            # (block, j, h, g, chunk, t, s, half, e)
    n, k = blocks * 16 * r, chunks * 64 * e
    return v.reshape(n, k).contiguous().view(dtype)


@gluon.jit
def _mma_direct_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr, M, N, K,
                       stride_xw, stride_om, R: gl.constexpr, FP8: gl.constexpr,
                       HAS_BIAS: gl.constexpr, EARLY: gl.constexpr, CVT: gl.constexpr,
                       PDL: gl.constexpr):
    # out[:M, rows of block pid 0] (+)= x W^T over chunks [c0, c1) of split pid 1 (x rows read as
    # int32 words, stride_xw words apart; fp8: times ws_ptr[row] and xs_ptr[m]); see the module
    # docstring. EARLY: the first chunk's weights are loaded before waiting for the kernel before
    # (PDL), and each next chunk's while the current one's are used. CVT: fp8 through _MMA_FP8_CVT.
    NW: gl.constexpr = gl.num_warps()
    CK: gl.constexpr = 256 if FP8 else 128
    MMA: gl.constexpr = (_MMA_FP8_CVT if CVT else _MMA_FP8) if FP8 else _MMA_BF16
    L: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 32, 1, 1], [NW, 1, 1, 1], [3, 2, 1, 0])
    blk = gl.program_id(0)
    split = gl.program_id(1)
    nsplit = gl.num_programs(1)
    chunks = K // CK
    c0 = split * chunks // nsplit
    c1 = (split + 1) * chunks // nsplit
    S3: gl.constexpr = gl.SliceLayout(3, L)
    warp = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, S3)))[:, None, None, None]
    lane = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, S3)))[None, :, None, None]
    tile = gl.arange(0, R, layout=gl.SliceLayout(0, gl.SliceLayout(1, S3)))[None, None, :, None]
    reg = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, L))))
    reg = reg[None, None, None, :]
    t = lane % 4
    col = lane // 4  # the B column (x row) this lane feeds
    STEP_WORDS: gl.constexpr = 32 * R * 4
    CHUNK_WORDS: gl.constexpr = 8 * STEP_WORDS
    blk_words = w_ptr + blk.to(gl.int64) * chunks * CHUNK_WORDS
    in_step = lane * (R * 4) + tile * 4 + reg  # [1, 32, R, 4]
    # words (x_a, x_b, x_a, x_b) of row col: B's two registers (the last two unused)
    xw = x_ptr.to(gl.pointer_type(gl.int32)) + col * stride_xw + 16 * t + (reg % 2)
    x_ok = col < M
    acc = gl.zeros([NW, 32, R, 4], gl.float32, L)
    cw = c0 + warp
    if EARLY:
        w0, w1, w2, w3, w4, w5, w6, w7 = _step_words(
            blk_words, cw, c1 - 1, in_step, CHUNK_WORDS, STEP_WORDS)
    pdl_start_gluon(PDL)
    for c in range(c0, c1, NW):
        cw = c + warp
        ok = cw < c1
        if not EARLY:
            w0, w1, w2, w3, w4, w5, w6, w7 = _step_words(
                blk_words, cw, c1 - 1, in_step, CHUNK_WORDS, STEP_WORDS)
        xp = xw + cw * 64
        xm = ok & x_ok
        for s in gl.static_range(_STEPS):
            xab = gl.load(xp + 2 * s, mask=xm, other=0)  # [NW, 32, 1, 4]
            w = _step(s, w0, w1, w2, w3, w4, w5, w6, w7)
            acc = gl.inline_asm_elementwise(MMA, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f",
                                            [w, xab + w * 0, acc], dtype=gl.float32, is_pure=True,
                                            pack=4)
        if EARLY:  # the next chunk's weights
            cn = c + NW + warp
            w0, w1, w2, w3, w4, w5, w6, w7 = _step_words(
                blk_words, cn, c1 - 1, in_step, CHUNK_WORDS, STEP_WORDS)
    # [32, R, 4] sums of the warps; lane (g, t), register p: row 16 j + g + 8 (p // 2) of the block,
    # x row 2 t + p % 2
    tot = gl.sum(acc, axis=0)
    T: gl.constexpr = gl.SliceLayout(0, L)
    lane2 = gl.arange(0, 32, layout=gl.SliceLayout(1, gl.SliceLayout(2, T)))[:, None, None]
    tile2 = gl.arange(0, R, layout=gl.SliceLayout(0, gl.SliceLayout(2, T)))[None, :, None]
    reg2 = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, T)))[None, None, :]
    rows = blk * (16 * R) + 16 * tile2 + lane2 // 4 + 8 * (reg2 // 2)
    m = 2 * (lane2 % 4) + reg2 % 2
    keep = (m < M) & (rows < N)
    if FP8:
        tot = tot * gl.load(ws_ptr + rows, mask=keep, other=0.0) * gl.load(xs_ptr + m, mask=keep,
                                                                           other=0.0)
    _finish(tot, rows, m, M, N, out_ptr, part_ptr, lock_ptr, bias_ptr, blk, split, nsplit, stride_om,
            HAS_BIAS)
    if nsplit > 1:
        gl.thread_barrier()  # every thread's partial stores precede the release below
        arrived = gl.atomic_add(lock_ptr + blk, 1, sem="acq_rel", scope="gpu")
        if arrived == nsplit - 1:
            gl.thread_barrier()
            _sum_splits(rows, m, M, N, out_ptr, part_ptr, bias_ptr, nsplit, stride_om, HAS_BIAS)
            gl.atomic_xchg(lock_ptr + blk, 0, sem="relaxed", scope="gpu")


def mma_direct_gemv(x2: torch.Tensor, x_scale: torch.Tensor | None, words: torch.Tensor,
                    w_scale: torch.Tensor | None, bias: torch.Tensor | None, n: int, k: int,
                    out_dtype: torch.dtype, split: int = 0, warps: int = MMA_DIRECT_WARPS,
                    per_sm: int = MMA_DIRECT_PER_SM, early: bool = True,
                    out: torch.Tensor | None = None, cvt: bool | None = None) -> torch.Tensor:
    """x2 [M <= 8, K] (fp8 codes with x_scale float32 [M] or [M, 1], or bfloat16; rows 4-byte
    aligned) @ the weight packed by pack_mma_direct (words; fp8: row scales w_scale float32 [N]);
    returns [M, N] of out_dtype (+ bias), written into out when given ([M, N] of out_dtype, rows
    contiguous). CUDA only. split > 0 forces the K split. cvt: fp8 through the written-out
    conversions and chained f16 mmas (_MMA_FP8_CVT) instead of ptxas's lowering of the e4m3 mma;
    None reads KILN_MMA_DIRECT_CVT (0 by default: 3.253 ms against 3.007 for the 8B chain on
    the H100)."""
    m = x2.shape[0]
    fp8 = x2.dtype == torch.float8_e4m3fn
    r = words.shape[-2]
    if (m > MMA_DIRECT_MAX_M or x2.dtype not in (torch.float8_e4m3fn, torch.bfloat16)
            or x2.shape[1] != k or x2.stride(1) != 1 or (x2.stride(0) * x2.element_size()) % 4
            or x2.data_ptr() % 4 or words.shape[:2] != (n // (16 * r), k // chunk_k(x2.dtype))
            or (fp8 and (x_scale is None or w_scale is None))):
        raise ValueError(f"mma_direct_gemv takes up to {MMA_DIRECT_MAX_M} rows of K={k} (fp8 codes "
                         "with their scales, or bfloat16; 4-byte aligned) and weights packed for "
                         f"N={n} from the same dtype")
    blocks, chunks = words.shape[0], words.shape[1]
    if cvt is None:
        cvt = os.environ.get("KILN_MMA_DIRECT_CVT", "0") == "1"
    split = split or _split(blocks, chunks, warps, per_sm, _num_sms(x2.device))
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=x2.device)
    elif out.shape != (m, n) or out.dtype != out_dtype or out.stride(1) != 1:
        raise ValueError(f"mma_direct_gemv: out must be [{m}, {n}] of {out_dtype} with contiguous rows")
    split, locks, part = _split_buffers(split, blocks, out, words)
    xs = x_scale.reshape(-1).float().contiguous() if fp8 else out
    ws = w_scale.float().contiguous() if fp8 else out
    pdl = pdl_args(x2)
    _mma_direct_kernel[(blocks, split)](
        x2, xs, words, ws, bias if bias is not None else out, out, part, locks, m, n, k,
        x2.stride(0) * x2.element_size() // 4, out.stride(0), R=r, FP8=fp8,
        HAS_BIAS=bias is not None, EARLY=early, CVT=cvt and fp8, num_warps=warps, **pdl)
    return out


def pack_if_enabled(weight: torch.Tensor) -> torch.Tensor | None:
    """pack_mma_direct(weight) for an unquantized bfloat16 CUDA weight when KILN_MMA_DIRECT names
    float and the shape fits; None otherwise (what the layers keep as their second copy)."""
    n, k = weight.shape
    if (weight.is_cuda and weight.dtype == torch.bfloat16 and mma_direct_enabled("float")
            and mma_direct_ok(n, k, weight.dtype)):
        return pack_mma_direct(weight)
    return None


def linear(x: torch.Tensor, words: torch.Tensor, bias: torch.Tensor | None, n: int,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] bfloat16 (at most MMA_DIRECT_MAX_M rows) @ a bfloat16 weight packed by
    pack_mma_direct (+ bias) -> [..., N], or into out ([rows, N], contiguous)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.stride(0) * x2.element_size()) % 4 or x2.data_ptr() % 4:
        x2 = x2.clone(memory_format=torch.contiguous_format)  # read as 32-bit words
    y = mma_direct_gemv(x2, None, words, None, bias, n, k, x.dtype, out=out)
    return y if out is not None else y.reshape(*x.shape[:-1], n)
