"""int4 weight-only products of a few rows (M <= 8, decode) on the tensor cores straight from
registers (KILN_INT4_MMA=1; off by default: in the 8B int4-wo engine on the H100 its launches take
3% longer than the FMA GEMV's, benchmarks/h200-mma-int4).

The weights are stored once more, in the order of mma.m16n8k16's A fragments (pack_int4_mma): for
a tile of 16 rows and a step of 16 k, lane l's 32-bit word holds exactly its fragment's 8 values,
so a thread's words go from memory to registers (16-byte loads of R tiles) and from there to the
tensor cores: no shared memory, no float conversion of the weights. A word becomes its four
bfloat16 pairs by 3 shifts and 4 lop3 (a nibble n OR'd into bfloat16 128.0 is 128 + n exactly);
the +8 storage offset and the 128 are taken off once a group, not once a weight:
sum (128 + n) x - 136 sum x = sum (n - 8) x = sum q x, with sum x over the group from one more mma
a step (A all ones). x [M, K] bfloat16 is the B operand: column c of B is row c of x (zero for
c >= M), so lane (g, t) reads row g. The k order inside a group is permuted the same way on both
sides so that lane (g, t) reads its x as one run of 16 words a group (16 t .. 16 t + 15).

Products and sums are exact float32 tensor-core products of bfloat16 values accumulated in
float32 (the group offset costs about 7 of float32's 24 bits, far below the bfloat16 output's
rounding); scales multiply each group's sum once.

Grid: (N / 16 R row blocks, K splits). A program's warps take consecutive groups of its split;
their sums meet in shared memory; a split program stores float32 partials and the last of a
block's programs to arrive sums them in split order (qmm_common's fused split-K scheme: no
second kernel) and writes out[M, N] with the bias in x's dtype.
"""

from __future__ import annotations

import os

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from kiln.kernels import pdl_args
from kiln.kernels.int4_bits import int4x8_bf16_128_ptx
from kiln.kernels.pdl import pdl_start_gluon
from kiln.kernels.qmm_common import SPLIT_LOCKS, _num_sms, _partials, split_locks

MMA_INT4_GROUP = 128
MMA_INT4_MAX_M = 8      # B's columns
MMA_INT4_R = 2          # 16-row tiles a warp (32 rows a program); H100 chain: see MMA_INT4_PER_SM
_GROUP = gl.constexpr(MMA_INT4_GROUP)
_STEPS = gl.constexpr(MMA_INT4_GROUP // 16)

# Word $4 -> lane's A fragment (4 bfloat16 pairs 128 + nibble), then D = A B + C with B = ($5, $6)
# and C = ($7 .. $10); D in $0 .. $3 (c0 c1: row g, columns 2t, 2t + 1; c2 c3: row g + 8).
_MMA_WORD = gl.constexpr("""
{
.reg .b32 ka0, ka1, ka2, ka3;
""" + int4x8_bf16_128_ptx("$4", "ka") + """mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {ka0, ka1, ka2, ka3}, {$5, $6}, {$7, $8, $9, $10};
}
""")
# Column sums of B over the step's 16 k added to C (A all ones): D[r, c] = C[r, c] + sum_k B[k, c].
_MMA_ONES = gl.constexpr("""
{
.reg .b32 kone;
mov.b32 kone, 0x3F803F80;
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {kone, kone, kone, kone}, {$4, $5}, {$6, $7, $8, $9};
}
""")


def int4_mma_enabled() -> bool:
    """Whether int4 weight-only layers keep a copy of their weights in the A-fragment order and
    take _int4_mma_kernel for up to MMA_INT4_MAX_M rows (KILN_INT4_MMA=1). Off by default: in the
    8B int4-wo engine on the H100, batch 1, 359.2 against 361.6 tok/s, its 128 launches 1.970 ms
    a step against the FMA GEMV's 1.904 (benchmarks/h200-mma-int4, 2026-12-06); not run on the
    H200."""
    return os.environ.get("KILN_INT4_MMA", "0") == "1"


def int4_mma_ok(n: int, k: int, group_size: int, r: int = MMA_INT4_R) -> bool:
    """Whether an [N, K] int4 weight fits the kernel: group 128, N a multiple of 16 r."""
    return group_size == MMA_INT4_GROUP and n % (16 * r) == 0 and k % MMA_INT4_GROUP == 0


def pack_int4_mma(qweight: torch.Tensor, scales: torch.Tensor, r: int = MMA_INT4_R
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major int4 weights (uint8 [N, K // 2], byte j: k = 2j low nibble, 2j + 1 high, as
    q + 8) and float32 scales [N, K // 128] -> (int32 words [N / 16r, K / 128, 8, 32, r],
    float32 scales [N / 16r, K / 128, 2, 8, r]) in _int4_mma_kernel's order.

    Word (block, group, step s, lane 4 g + t, tile j), for rows a = 16 j + g and b = a + 8 of the
    block and k = 128 group + 32 t + 4 s: nibbles 0, 4, 2, 6 = row a at k, k + 1, k + 2, k + 3;
    nibbles 1, 5, 3, 7 = row b at the same k (after the word's shifts the A fragment's pairs
    a0a1, a2a3, a4a5, a6a7 are nibbles (0, 4), (1, 5), (2, 6), (3, 7)). Scale (block, group,
    h, g, j) is row 16 j + 8 h + g's."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if not int4_mma_ok(n, k, MMA_INT4_GROUP, r) or scales.shape != (n, k // MMA_INT4_GROUP):
        raise ValueError(f"pack_int4_mma: [N={n}, K={k}] with scales {tuple(scales.shape)} needs N "
                         f"a multiple of {16 * r}, K of {MMA_INT4_GROUP} and one scale a group")
    nib = torch.stack((qweight & 15, qweight >> 4), dim=-1).reshape(n, k).to(torch.int32)
    # rows (block, tile j, half h, g); k (group, t, s, i)
    v = nib.reshape(n // (16 * r), r, 2, 8, k // MMA_INT4_GROUP, 4, 8, 4)
    v = v.permute(0, 4, 6, 3, 5, 1, 2, 7)  # (block, group, s, g, t, j, h, i)
    shift = torch.tensor([[0, 4, 2, 6], [1, 5, 3, 7]], dtype=torch.int32, device=qweight.device) * 4
    words = (v.to(torch.int64) << shift).sum(dim=(-1, -2))
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    words = words.reshape(n // (16 * r), k // MMA_INT4_GROUP, 8, 32, r)
    s = scales.float().reshape(n // (16 * r), r, 2, 8, k // MMA_INT4_GROUP).permute(0, 4, 2, 3, 1)
    return words.contiguous(), s.contiguous()


def unpack_int4_mma(words: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of pack_int4_mma: (uint8 [N, K // 2] row-major, float32 [N, K // 128])."""
    blocks, groups, _, _, r = words.shape
    w = words.to(torch.int64) & 0xFFFFFFFF
    shift = torch.tensor([[0, 4, 2, 6], [1, 5, 3, 7]], device=words.device) * 4
    v = (w[..., None, None] >> shift) & 15  # (block, group, s, lane, j, h, i)
    v = v.reshape(blocks, groups, 8, 8, 4, r, 2, 4)  # (block, group, s, g, t, j, h, i)
    v = v.permute(0, 5, 6, 3, 1, 4, 2, 7)  # (block, j, h, g, group, t, s, i)
    n, k = blocks * 16 * r, groups * MMA_INT4_GROUP
    nib = v.reshape(n, k).to(torch.uint8)
    q = nib[:, 0::2] | (nib[:, 1::2] << 4)
    s = scales.permute(0, 4, 2, 3, 1).reshape(n, groups)
    return q, s


@gluon.jit
def _step_words(base, unit, last, offs, UNIT: gl.constexpr, STEP: gl.constexpr):
    """The 8 steps' words (STEP words apart) of weight unit `unit` (UNIT words each; a group here,
    a chunk in mma_direct) at offsets offs. A warp past its split's last unit reads that one again
    (or unit 0 in an empty split), unmasked: its x (and scales) are zero and the weights finite,
    so it adds nothing, and unmasked loads need no zeroing of their registers."""
    wp = base + gl.maximum(gl.minimum(unit, last), 0).to(gl.int64) * UNIT + offs
    return (gl.load(wp + 0 * STEP), gl.load(wp + 1 * STEP), gl.load(wp + 2 * STEP),
            gl.load(wp + 3 * STEP), gl.load(wp + 4 * STEP), gl.load(wp + 5 * STEP),
            gl.load(wp + 6 * STEP), gl.load(wp + 7 * STEP))


@gluon.jit
def _words(blk_words, gw, g1, lane, tile, R: gl.constexpr):
    """The 8 steps' words of group(s) gw, [NW, 32, R] each (split ending at g1; _step_words)."""
    return _step_words(blk_words, gw, g1 - 1, lane * R + tile, _STEPS * 32 * R, 32 * R)


@gluon.jit
def _step(s: gl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7):
    """The one of a group's 8 step tensors that step s (unrolled) takes."""
    if s == 0:
        return w0
    elif s == 1:
        return w1
    elif s == 2:
        return w2
    elif s == 3:
        return w3
    elif s == 4:
        return w4
    elif s == 5:
        return w5
    elif s == 6:
        return w6
    else:
        return w7


@gluon.jit
def _int4_mma_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr, M, N, K, stride_xm,
                     stride_om, R: gl.constexpr, HAS_BIAS: gl.constexpr, EARLY: gl.constexpr,
                     PDL: gl.constexpr):
    # out[:M, rows of block pid 0] (+)= x W^T over groups [g0, g1) of split pid 1; see the module
    # docstring. EARLY: the first groups' weights are loaded before waiting for the kernel before
    # (PDL), and each next group's while the current one's are used.
    NW: gl.constexpr = gl.num_warps()
    L: gl.constexpr = gl.BlockedLayout([1, 1, R], [1, 32, 1], [NW, 1, 1], [2, 1, 0])
    blk = gl.program_id(0)
    split = gl.program_id(1)
    nsplit = gl.num_programs(1)
    groups = K // _GROUP
    g0 = split * groups // nsplit
    g1 = (split + 1) * groups // nsplit
    warp = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, L)))[:, None, None]
    lane = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, L)))[None, :, None]
    tile = gl.arange(0, R, layout=gl.SliceLayout(0, gl.SliceLayout(1, L)))[None, None, :]
    t = lane % 4
    col = lane // 4  # the B column (x row) this lane feeds
    zero_i = gl.zeros([NW, 32, R], gl.int32, L)
    zero_f = gl.zeros([NW, 32, R], gl.float32, L)
    zero_x = gl.zeros([NW, 32, 1], gl.float32, L)
    blk_words = w_ptr + blk.to(gl.int64) * (groups * _STEPS * 32 * R)
    blk_scales = s_ptr + blk.to(gl.int64) * (groups * 16 * R)
    xw = x_ptr.to(gl.pointer_type(gl.int32)) + col * (stride_xm // 2) + 16 * t
    x_ok = col < M
    acc_a0 = zero_f  # rows a (16 j + g) and b (a + 8), columns 2t and 2t + 1
    acc_a1 = zero_f
    acc_b0 = zero_f
    acc_b1 = zero_f
    if EARLY:
        w0, w1, w2, w3, w4, w5, w6, w7 = _words(blk_words, g0 + warp, g1, lane, tile, R)
    pdl_start_gluon(PDL)
    for g in range(g0, g1, NW):
        gw = g + warp
        ok = gw < g1
        if EARLY:
            n0, n1, n2, n3, n4, n5, n6, n7 = _words(blk_words, gw + NW, g1, lane, tile, R)
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = _words(blk_words, gw, g1, lane, tile, R)
        sp = blk_scales + gw.to(gl.int64) * (16 * R) + (lane // 4) * R + tile
        sa = gl.load(sp, mask=ok, other=0.0)
        sb = gl.load(sp + 8 * R, mask=ok, other=0.0)
        xp = xw + gw * (_GROUP // 2)
        xm = ok & x_ok
        c0 = zero_f
        c1 = zero_f
        c2 = zero_f
        c3 = zero_f
        s0 = zero_x
        s1 = zero_x
        s2 = zero_x
        s3 = zero_x
        for s in gl.static_range(_STEPS):
            xa = gl.load(xp + 2 * s, mask=xm, other=0)
            xb = gl.load(xp + 2 * s + 1, mask=xm, other=0)
            w = _step(s, w0, w1, w2, w3, w4, w5, w6, w7)
            c0, c1, c2, c3 = gl.inline_asm_elementwise(
                _MMA_WORD, "=f,=f,=f,=f,r,r,r,f,f,f,f", [w, xa + zero_i, xb + zero_i, c0, c1, c2, c3],
                dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)
            s0, s1, s2, s3 = gl.inline_asm_elementwise(
                _MMA_ONES, "=f,=f,=f,=f,r,r,f,f,f,f", [xa, xb, s0, s1, s2, s3],
                dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)
        acc_a0 += sa * (c0 - 136.0 * s0)
        acc_a1 += sa * (c1 - 136.0 * s1)
        acc_b0 += sb * (c2 - 136.0 * s2)
        acc_b1 += sb * (c3 - 136.0 * s3)
        if EARLY:
            w0 = n0
            w1 = n1
            w2 = n2
            w3 = n3
            w4 = n4
            w5 = n5
            w6 = n6
            w7 = n7
    # [32, R] sums of the warps; lane (g, t) holds rows a, b of each tile for x rows 2t, 2t + 1
    T: gl.constexpr = gl.SliceLayout(0, L)
    lane2 = gl.arange(0, 32, layout=gl.SliceLayout(1, T))[:, None]
    tile2 = gl.arange(0, R, layout=gl.SliceLayout(0, T))[None, :]
    row_a = blk * (16 * R) + 16 * tile2 + lane2 // 4
    m0 = 2 * (lane2 % 4)
    _finish(gl.sum(acc_a0, axis=0), row_a, m0, M, N, out_ptr, part_ptr, lock_ptr, bias_ptr, blk,
            split, nsplit, stride_om, HAS_BIAS)
    _finish(gl.sum(acc_a1, axis=0), row_a, m0 + 1, M, N, out_ptr, part_ptr, lock_ptr, bias_ptr, blk,
            split, nsplit, stride_om, HAS_BIAS)
    _finish(gl.sum(acc_b0, axis=0), row_a + 8, m0, M, N, out_ptr, part_ptr, lock_ptr, bias_ptr,
            blk, split, nsplit, stride_om, HAS_BIAS)
    _finish(gl.sum(acc_b1, axis=0), row_a + 8, m0 + 1, M, N, out_ptr, part_ptr, lock_ptr, bias_ptr,
            blk, split, nsplit, stride_om, HAS_BIAS)
    if nsplit > 1:
        gl.thread_barrier()  # every thread's partial stores precede the release below
        arrived = gl.atomic_add(lock_ptr + blk, 1, sem="acq_rel", scope="gpu")
        if arrived == nsplit - 1:
            gl.thread_barrier()
            for h in gl.static_range(2):
                for c in gl.static_range(2):
                    _sum_splits(row_a + 8 * h, m0 + c, M, N, out_ptr, part_ptr, bias_ptr, nsplit,
                                stride_om, HAS_BIAS)
            gl.atomic_xchg(lock_ptr + blk, 0, sem="relaxed", scope="gpu")


@gluon.jit
def _finish(tot, rows, m, M, N, out_ptr, part_ptr, lock_ptr, bias_ptr, blk, split, nsplit,
            stride_om, HAS_BIAS: gl.constexpr):
    """A program's sums (one of four [32, R] for int4, [32, R, 4] for mma_direct): the output
    (unsplit, + bias) or split's partial."""
    ok = (m < M) & (rows < N)
    if nsplit == 1:
        if HAS_BIAS:
            tot += gl.load(bias_ptr + rows, mask=ok, other=0.0).to(gl.float32)
        gl.store(out_ptr + m * stride_om + rows, tot.to(out_ptr.dtype.element_ty), mask=ok)
    else:
        gl.store(part_ptr + (split * M + m) * N + rows, tot, mask=ok)


@gluon.jit
def _sum_splits(rows, m, M, N, out_ptr, part_ptr, bias_ptr, nsplit, stride_om, HAS_BIAS: gl.constexpr):
    """The last program of a block: out[m, rows] = the nsplit partials summed in split order
    (+ bias); rows and m broadcast to the sums' shape and layout."""
    ok = (m < M) & (rows < N)
    total = gl.zeros_like(rows + m, dtype=gl.float32)
    for sk in range(0, nsplit):
        total += gl.load(part_ptr + (sk * M + m) * N + rows, mask=ok, other=0.0, cache_modifier=".cg")
    if HAS_BIAS:
        total += gl.load(bias_ptr + rows, mask=ok, other=0.0).to(gl.float32)
    gl.store(out_ptr + m * stride_om + rows, total.to(out_ptr.dtype.element_ty), mask=ok)


def _split(blocks: int, groups: int, warps: int, per_sm: int, sms: int) -> int:
    """K splits: each warp takes as few groups as let the grid hold per_sm programs an SM."""
    each = -(-blocks * groups // (warps * per_sm * sms))
    return max(1, min(groups // (warps * each), groups))


def _split_buffers(split: int, blocks: int, out: torch.Tensor, words: torch.Tensor
                   ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(split, arrival counters, float32 partials) for a launch writing out [M, N] (an unsplit
    launch reads neither: out stands in for the partials and the int32 words for the counters,
    whose atomics must still compile on an int32 pointer). No split while a graph is captured
    before the counters exist, or with more row blocks than counters."""
    locks = split_locks(out.device) if split > 1 else None
    if split > 1 and (locks is None or blocks > SPLIT_LOCKS):
        split = 1
    return split, locks if split > 1 else words, _partials(split, *out.shape, out, False)


MMA_INT4_WARPS = 4
MMA_INT4_PER_SM = 8  # with R 2: 1.971 ms for the 8B chain on the H100, R 4 x 4 2.402, rb16 2.143


def int4_mma_gemv(x2: torch.Tensor, words: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None, n: int, k: int, split: int = 0,
                  warps: int = MMA_INT4_WARPS, per_sm: int = MMA_INT4_PER_SM,
                  early: bool = True) -> torch.Tensor:
    """x2 [M <= 8, K] bfloat16 (rows 4-byte aligned) @ the int4 weight packed by pack_int4_mma
    (words, scales); returns [M, N] bfloat16 (+ bias). CUDA only. split > 0 forces the K split."""
    m = x2.shape[0]
    r = words.shape[-1]
    if (m > MMA_INT4_MAX_M or x2.dtype != torch.bfloat16 or x2.shape[1] != k or x2.stride(1) != 1
            or x2.stride(0) % 2 or x2.data_ptr() % 4 or words.shape[:2] != (n // (16 * r), k // 128)):
        raise ValueError(f"int4_mma_gemv takes up to {MMA_INT4_MAX_M} bfloat16 rows of K={k} "
                         f"(4-byte aligned) and weights packed for N={n}")
    blocks, groups = n // (16 * r), k // MMA_INT4_GROUP
    split = split or _split(blocks, groups, warps, per_sm, _num_sms(x2.device))
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    split, locks, part = _split_buffers(split, blocks, out, words)
    pdl = pdl_args(x2)
    _int4_mma_kernel[(blocks, split)](
        x2, words, scales, bias if bias is not None else out, out, part, locks, m, n, k,
        x2.stride(0), out.stride(0), R=r,
        HAS_BIAS=bias is not None, EARLY=early, num_warps=warps, **pdl)
    return out
