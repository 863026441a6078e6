"""The batch-1 int4 weight-only GEMV through a shared-memory ring of weight copies, with the
products on the tensor cores (Gluon, sm_90).

y [1, N] = x [1, K] @ dequant(w).T (+ bias), x bfloat16, w int4 in the engine's blocked layout
(int4_bits.tile_int4_rows with blocks of 16 rows and groups of 128: [N / 16, K / 128, 16 rows,
64 bytes], each 1 KB "chunk" one group of one block's rows), float32 group scales [N, K / 128].

It joins two things measured apart (benchmarks/h200-ring, benchmarks/h200-mma-int4):
- the ring of ring_gemv: P programs (two an SM) cut the layer's units into P equal runs
  (stream-K); each first issues cp.async copies of its first units, then waits for the kernel
  before (PDL), so the copies overlap that kernel's tail; then unit i is computed while the
  copies of the next STAGES - 1 are in flight. A unit here is CH consecutive chunks (16 KB with
  CH = 16): one block of 16 rows over CH groups, one contiguous run of the weights, with its
  16 x CH scales. An int4 ring whose dot was float FMAs tied the engine's GEMV: the arithmetic
  bound it.
- the tensor-core dot of mma_int4 (about one instruction a weight): a 32-bit word of 8 nibbles
  becomes four bfloat16 pairs 128 + nibble by 3 shifts and 4 lop3 (int4_bits), fed to
  mma.m16n8k16 as A; x is B, the same in every column, so every lane ends with its rows' sums.

The mapping needs no repacking of the weights: warp w takes chunks w, w + 4, ... of a unit;
lane (g, t) = 4 g + t reads, of a chunk, row g's and row g + 8's 16 bytes at byte 16 t (k = 32 t
.. 32 t + 31 of the group), word j of each (k0 = 32 t + 8 j) giving two mma steps: A = {row g
(k0, k0+4), row g+8 (k0, k0+4), row g (k0+1, k0+5), row g+8 (k0+1, k0+5)} with B = {(x[k0],
x[k0+4]), (x[k0+1], x[k0+5])}, then the same for (k0+2, k0+6), (k0+3, k0+7). The k order inside
an mma is only a permutation of the sum. Every program lays x out once a launch in shared memory
as those pairs (four planes, P_h = (x[8b + h], x[8b + h + 4]) for 8-value block b, stored [step,
chunk, j, t]) and the group sums of x: a group's sum is 136 sum x short of sum (128 + n) x, and
n = q + 8, so its product is s (c - 136 sum x), c the mma's float32 sum (about 7 of float32's 24
bits go to the offset, far below the bfloat16 output's rounding). Tiles (16 rows) that runs
share are finished as in ring_gemv (partials in program order, the last to arrive adds them).

CUDA sm_90 only; the reference is quant_ref.int4_wo_linear_ref on the row-major weights
(ring_int4_ref on the blocked ones). Used for batch-1 int4 rows with KILN_RING_INT4=1 where
ring_int4_ok and ring_int4_worth hold; off by default (ring_int4_enabled says why).
"""

from __future__ import annotations

import os

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from kiln.kernels import pdl_args
from kiln.kernels.int4_bits import int4x8_bf16_128_ptx
from kiln.kernels.pdl import pdl_start_gluon
from kiln.kernels.ring_gemv import _finish, _workspace, output_row, ring_early

RING_INT4_GROUP = 128
RING_INT4_ROWS = 16          # rows a block (the engine's int4 row block)
RING_INT4_WARPS = 4
RING_INT4_PER_SM = 2
RING_INT4_MAX_K = 16384      # x's pairs take 2 K bytes of shared memory a program
_SMEM_BUDGET = 112 * 1024    # a program's shared memory, two an SM

# $4: row g's word, $5: row g + 8's, $6..$9: x pairs P0..P3 of the word's 8 k, $10..$13: C.
_MMA_WORDS = gl.constexpr("""
{
.reg .b32 ka0, ka1, ka2, ka3, kb0, kb1, kb2, kb3;
""" + int4x8_bf16_128_ptx("$4", "ka") + int4x8_bf16_128_ptx("$5", "kb") + """
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {ka0, kb0, ka1, kb1}, {$6, $7}, {$10, $11, $12, $13};
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {ka2, kb2, ka3, kb3}, {$8, $9}, {$0, $1, $2, $3};
}
""")


def ring_int4_enabled() -> bool:
    """Whether batch-1 int4 rows of large layers take ring_int4_gemv where it applies
    (KILN_RING_INT4=1). Off by default, and not part of the batch-1 ring path an engine's
    decode-step tuning chooses: in the 8B int4-wo engine on an H100 it cost 1.6% at batch 1
    (367.5 against 373.5 tok/s with gate_up alone on it; 331.2 against 374.1 with every layer)
    though gate_up alone, in a graph of its own launches, was 6% faster (benchmarks/h200-ring,
    h100-2026-12-06c). Not run on the H200."""
    return os.environ.get("KILN_RING_INT4", "0") == "1"


# Below this many weight bytes a launch's fixed costs (every program lays out all of x, the
# ring's first fill, the tail) outweigh its streaming: on an H100 the 8B's gate_up (58.7 MB)
# took 25.1 us against the FMA GEMV's 26.8 and the int4 LM head (263 MB) 95.2 against 105.6,
# but qkv (12.6 MB) 10.5 against 8.7, o (8.4 MB) 9.1 against 8.0 and down (29.4 MB) 18.7
# against 16.1 (benchmarks/h200-ring, h100-2026-12-06c).
RING_INT4_MIN_BYTES = 40 * 10**6


def ring_int4_worth(n: int, k: int) -> bool:
    """Whether an [n, k] int4 weight is large enough for the ring (RING_INT4_MIN_BYTES of
    nibbles; KILN_RING_INT4_MIN_MB overrides, 0 takes every shape the kernel does)."""
    flag = os.environ.get("KILN_RING_INT4_MIN_MB")
    least = float(flag) * 10**6 if flag else RING_INT4_MIN_BYTES
    return n * k // 2 >= least


def ring_int4_chunks(k: int) -> int:
    """Chunks (groups of 128 k) a unit for K, 0 where the kernel does not apply: at least two
    units a row block (a kernel of one unit a tile, K 1024 or less, fails to compile)."""
    groups = k // RING_INT4_GROUP
    for ch in (16, 8):
        if k % RING_INT4_GROUP == 0 and groups % ch == 0 and groups >= 2 * ch and k <= RING_INT4_MAX_K:
            return ch
    return 0


def ring_int4_config(n: int, k: int) -> tuple[int, int, int, int, int] | None:
    """(BLOCK_N, BLOCK_K, warps, stages, programs an SM) for an [n, k] int4 weight, or None.
    BLOCK_K is a unit's k (CH groups); the stages are as many as a program's shared memory
    holds, at most 5 (KILN_RING_STAGES overrides, as for ring_gemv)."""
    ch = ring_int4_chunks(k)
    if not ch or n % RING_INT4_ROWS:
        return None
    unit = ch * 1024 + RING_INT4_ROWS * ch * 4
    fixed = 2 * k + 4 * (k // RING_INT4_GROUP)  # x's pairs and group sums
    stages = min(5, (_SMEM_BUDGET - fixed) // unit)
    stages = int(os.environ.get("KILN_RING_STAGES", stages))
    per_sm = int(os.environ.get("KILN_RING_PER_SM", RING_INT4_PER_SM))
    return (RING_INT4_ROWS, ch * RING_INT4_GROUP, RING_INT4_WARPS, stages, per_sm)


def ring_int4_ok(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                 row_block: int) -> bool:
    """Whether ring_int4_gemv takes x2 [1, K] with this weight: one bfloat16 row on an sm_90+
    GPU, groups of 128, blocks of 16 rows, float32 scales, K and N of a configuration."""
    if not (x2.is_cuda and x2.dim() == 2 and x2.shape[0] == 1 and x2.dtype == torch.bfloat16
            and x2.stride(-1) == 1 and x2.data_ptr() % 4 == 0 and group_size == RING_INT4_GROUP
            and row_block == RING_INT4_ROWS and qweight.dtype == torch.uint8
            and qweight.is_contiguous() and qweight.data_ptr() % 16 == 0
            and scales.dtype == torch.float32 and scales.is_contiguous()):
        return False
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if x2.shape[1] != k or scales.shape != (n, k // RING_INT4_GROUP):
        return False
    if torch.cuda.get_device_capability(x2.device)[0] < 9:
        return False
    return ring_int4_config(n, k) is not None


@gluon.constexpr_function
def _fill_layout(ch, warps):
    """[CH chunks, 4 j, 4 t] of x's words (pairs here, codes in ring_fp8) over the program's
    threads, t fastest."""
    if ch == 16:
        return gl.BlockedLayout([1, 1, 2], [8, 4, 1], [2, 1, 2], [2, 1, 0])
    return gl.BlockedLayout([1, 1, 1], [8, 4, 1], [1, 1, 4], [2, 1, 0])


@gluon.constexpr_function
def _scale_copy_layout(ch, warps):
    """A unit's scales [2 halves, 8 rows, CH groups]: 8-byte (CH 16) or 4-byte runs."""
    return gl.BlockedLayout([1, 1, ch // 8], [1, 4, 8], [2, 2, 1], [2, 1, 0])


@gluon.jit
def _unit_lanes(CH: gl.constexpr, WCP: gl.constexpr):
    """The (chunk c, half h, row g, lane t, word w) indices of a unit's copy layout WCP, each
    broadcast to [CH, 2, 8, 4, 4]: a thread copies the 16 bytes (4 words) of row 8 h + g at
    byte 16 t of chunk c (ring_fp8 shares the layout)."""
    W4: gl.constexpr = gl.SliceLayout(4, WCP)
    W3: gl.constexpr = gl.SliceLayout(3, W4)
    W4b: gl.constexpr = gl.SliceLayout(3, WCP)
    c = gl.arange(0, CH, layout=gl.SliceLayout(1, gl.SliceLayout(2, W3)))
    h = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(2, W3)))
    g = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, W3)))
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, W4))))
    w = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, W4b))))
    return (c[:, None, None, None, None], h[None, :, None, None, None], g[None, None, :, None, None],
            t[None, None, None, :, None], w[None, None, None, None, :])


@gluon.jit
def _slot_word(slot_w, half, j, L5: gl.constexpr, L3: gl.constexpr, CH: gl.constexpr):
    """Word j of rows g (half 0) or g + 8 (half 1) of every lane's 16 bytes in a ring slot,
    [CH, 8, 4] in L3: each thread reads back the words it copied."""
    return gl.convert_layout(gl.reshape(slot_w.slice(half, 1, 1).slice(j, 1, 4).load(L5), [CH, 8, 4]),
                             L3, assert_trivial=True)


@gluon.jit
def _issue(ring_w, ring_s, slot, w_ptr, s_ptr, u, valid, steps, groups, w_offs, s_rows, s_cols,
           CH: gl.constexpr):
    """Copy unit u (its CH KB of weights, one run, and its 16 x CH scales) into ring slot `slot`
    (nothing unless valid: zero-filled)."""
    tile = u // steps
    ks = u - tile * steps
    async_copy.async_copy_global_to_shared(ring_w.index(slot), w_ptr + u.to(gl.int64) * (CH * 256) + w_offs,
                                           mask=valid)
    s_ptrs = s_ptr + (tile * 16 + s_rows).to(gl.int64) * groups + ks * CH + s_cols
    async_copy.async_copy_global_to_shared(ring_s.index(slot), s_ptrs, mask=valid)
    async_copy.commit_group()


@gluon.jit
def _fill_x(x_ptr, x_pairs, x_sums, STEPS: gl.constexpr, CH: gl.constexpr):
    """x's pairs P0..P3 ([4 planes x STEPS, CH, 4 j, 4 t] int32, module docstring) and group sums
    ([STEPS, CH] float32) into shared memory."""
    FL: gl.constexpr = _fill_layout(CH, gl.num_warps())
    x32 = x_ptr.to(gl.pointer_type(gl.int32))  # bfloat16 pairs (x[2i], x[2i + 1])
    c = gl.arange(0, CH, layout=gl.SliceLayout(1, gl.SliceLayout(2, FL)))[:, None, None]
    j = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, FL)))[None, :, None]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, FL)))[None, None, :]
    for st in gl.static_range(STEPS):
        b = (st * CH + c) * 16 + 4 * t + j  # the 8-value block
        w0 = gl.load(x32 + 4 * b)
        w1 = gl.load(x32 + 4 * b + 1)
        w2 = gl.load(x32 + 4 * b + 2)
        w3 = gl.load(x32 + 4 * b + 3)
        lo = 0xFFFF
        hi = -65536  # 0xFFFF0000
        x_pairs.index(0 * STEPS + st).store((w0 & lo) | (w2 << 16))
        x_pairs.index(1 * STEPS + st).store(((w0 >> 16) & lo) | (w2 & hi))
        x_pairs.index(2 * STEPS + st).store((w1 & lo) | (w3 << 16))
        x_pairs.index(3 * STEPS + st).store(((w1 >> 16) & lo) | (w3 & hi))
        f = ((w0 << 16).to(gl.float32, bitcast=True) + (w0 & hi).to(gl.float32, bitcast=True)
             + (w1 << 16).to(gl.float32, bitcast=True) + (w1 & hi).to(gl.float32, bitcast=True)
             + (w2 << 16).to(gl.float32, bitcast=True) + (w2 & hi).to(gl.float32, bitcast=True)
             + (w3 << 16).to(gl.float32, bitcast=True) + (w3 & hi).to(gl.float32, bitcast=True))
        x_sums.index(st).store(gl.sum(gl.sum(f, axis=2), axis=1))
    gl.thread_barrier()


@gluon.jit
def _ring_int4_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, N, K,
                      HAS_BIAS: gl.constexpr, CH: gl.constexpr, STEPS: gl.constexpr,
                      STAGES: gl.constexpr, MAX_SEGS: gl.constexpr, PDL: gl.constexpr,
                      EARLY: gl.constexpr):
    NW: gl.constexpr = gl.num_warps()
    # (chunk, g, t): lane 4 g + t, warp w takes chunks w, w + NW, ...
    L3: gl.constexpr = gl.BlockedLayout([1, 1, 1], [1, 8, 4], [NW, 1, 1], [2, 1, 0])
    # (chunk, half, g, t, word) of a unit's weights: one word a thread (reads), or its 16 bytes
    L5: gl.constexpr = gl.BlockedLayout([1, 1, 1, 1, 1], [1, 1, 8, 4, 1], [NW, 1, 1, 1, 1],
                                        [4, 3, 2, 1, 0])
    WCP: gl.constexpr = gl.BlockedLayout([1, 1, 1, 1, 4], [1, 1, 8, 4, 1], [NW, 1, 1, 1, 1],
                                         [4, 3, 2, 1, 0])
    SCP: gl.constexpr = _scale_copy_layout(CH, NW)
    # unswizzled, row-major (a ring's layout is its slot's)
    S5: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1,
                                               order=[4, 3, 2, 1, 0])
    S3: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[2, 1, 0])
    S2: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    S1: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    p = gl.program_id(0)
    P = gl.num_programs(0)
    steps = STEPS  # units a tile (K // (128 CH), a constant: no division at run time)
    groups = STEPS * CH
    units = (N // 16) * steps
    u_begin = (p * units) // P
    u_end = ((p + 1) * units) // P
    n_units = u_end - u_begin

    ring_w = gl.allocate_shared_memory(gl.int32, [STAGES, CH, 2, 8, 4, 4], S5)
    ring_s = gl.allocate_shared_memory(gl.float32, [STAGES, 2, 8, CH], S3)
    x_pairs = gl.allocate_shared_memory(gl.int32, [4 * STEPS, CH, 4, 4], S3)  # plane h, step
    x_sums = gl.allocate_shared_memory(gl.float32, [STEPS, CH], S1)
    ring_s_halves = ring_s._reinterpret(gl.float32, [STAGES * 2, 8, CH], S2)  # (slot, half)

    # copy offsets: a unit's words in its order, its scales (row 8 h + g, group c)
    wc, wh, wg, wt, ww = _unit_lanes(CH, WCP)
    w_offs = wc * 256 + wh * 128 + wg * 16 + wt * 4 + ww
    sh = gl.arange(0, 2, layout=gl.SliceLayout(1, gl.SliceLayout(2, SCP)))[:, None, None]
    sg = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, SCP)))[None, :, None]
    s_cols = gl.arange(0, CH, layout=gl.SliceLayout(0, gl.SliceLayout(1, SCP)))[None, None, :]
    s_rows = sh * 8 + sg

    for s in gl.static_range(EARLY):  # weights only: before the wait
        _issue(ring_w, ring_s, s, w_ptr, s_ptr, u_begin + s, s < n_units, steps, groups, w_offs,
               s_rows, s_cols, CH)
    if PDL:  # wait, then trigger, whichever PDL value: the early copies are out already
        pdl_start_gluon(1)
    for s in gl.static_range(EARLY, STAGES - 1):
        _issue(ring_w, ring_s, s, w_ptr, s_ptr, u_begin + s, s < n_units, steps, groups, w_offs,
               s_rows, s_cols, CH)
    _fill_x(x_ptr, x_pairs, x_sums, STEPS, CH)

    t_idx = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))[None, None, :]
    zero_i = gl.zeros([CH, 8, 4], gl.int32, L3)
    zero_f = gl.zeros([CH, 8, 4], gl.float32, L3)
    acc_a = zero_f  # rows g (a) and g + 8 (b) of the tile, every column alike
    acc_b = zero_f
    for i in range(0, n_units):
        _issue(ring_w, ring_s, (i + STAGES - 1) % STAGES, w_ptr, s_ptr, u_begin + (i + STAGES - 1),
               i + STAGES - 1 < n_units, steps, groups, w_offs, s_rows, s_cols, CH)
        u = u_begin + i
        tile = u // steps
        ks = u - tile * steps
        async_copy.wait_group(STAGES - 1)
        slot_w = ring_w.index(i % STAGES)
        c0 = zero_f
        c1 = zero_f
        c2 = zero_f
        c3 = zero_f
        for j in gl.static_range(4):
            wa = _slot_word(slot_w, 0, j, L5, L3, CH)
            wb = _slot_word(slot_w, 1, j, L5, L3, CH)
            p0 = x_pairs.index(0 * STEPS + ks).slice(j, 1, 1).load(L3) + zero_i
            p1 = x_pairs.index(1 * STEPS + ks).slice(j, 1, 1).load(L3) + zero_i
            p2 = x_pairs.index(2 * STEPS + ks).slice(j, 1, 1).load(L3) + zero_i
            p3 = x_pairs.index(3 * STEPS + ks).slice(j, 1, 1).load(L3) + zero_i
            c0, c1, c2, c3 = gl.inline_asm_elementwise(
                _MMA_WORDS, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", [wa, wb, p0, p1, p2, p3, c0, c1, c2, c3],
                dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)
        sa = gl.expand_dims(ring_s_halves.index((i % STAGES) * 2).permute([1, 0]).load(
            gl.SliceLayout(2, L3)), 2)
        sb = gl.expand_dims(ring_s_halves.index((i % STAGES) * 2 + 1).permute([1, 0]).load(
            gl.SliceLayout(2, L3)), 2)
        sx = x_sums.index(ks).load(gl.SliceLayout(1, gl.SliceLayout(2, L3)))[:, None, None]
        acc_a += sa * (c0 - 136.0 * sx)
        acc_b += sb * (c2 - 136.0 * sx)
        if (ks == steps - 1) | (i == n_units - 1):  # the tile's last unit, or the run's end
            tot_a = gl.sum(gl.sum(gl.where(t_idx == 0, acc_a, 0.0), axis=2), axis=0)
            tot_b = gl.sum(gl.sum(gl.where(t_idx == 0, acc_b, 0.0), axis=2), axis=0)
            rows_a = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
            _finish(gl.join(tot_a, tot_b), tile, p, P, units, steps, bias_ptr, y_ptr, part_ptr,
                    count_ptr, gl.join(rows_a, rows_a + 8), HAS_BIAS, 16, MAX_SEGS)
            acc_a = zero_f
            acc_b = zero_f
    async_copy.wait_group(0)


def ring_int4_gemv(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
                   group_size: int = RING_INT4_GROUP, row_block: int = RING_INT4_ROWS) -> torch.Tensor:
    """x2 [1, K] bfloat16 @ the int4 weight (uint8 [N, K // 2] in blocks of 16 rows, float32
    scales [N, K // 128]) (+ bias) -> [1, N] bfloat16, into `out` when given (contiguous).
    Raises ValueError where it does not apply (ring_int4_ok)."""
    if not ring_int4_ok(x2, qweight, scales, group_size, row_block):
        raise ValueError(f"ring_int4_gemv takes one bfloat16 row on an sm_90 GPU and int4 weights in "
                         f"blocks of 16 rows, groups of 128, float32 scales, K a multiple of 1024 from "
                         f"2048 up to {RING_INT4_MAX_K}; got x {tuple(x2.shape)} {x2.dtype} on {x2.device}, "
                         f"w {tuple(qweight.shape)} {qweight.dtype}, group {group_size}, rows "
                         f"{row_block}, scales {tuple(scales.shape)} {scales.dtype}")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    cfg = ring_int4_config(n, k)
    _, block_k, warps, stages, _ = cfg
    programs, segs, counts, parts = _workspace(x2.device, n, k, cfg)
    y = output_row(x2, n, out, "ring_int4_gemv")
    ch = block_k // RING_INT4_GROUP
    _ring_int4_kernel[(programs,)](
        x2, qweight.view(torch.int32), scales, bias if bias is not None else y, y, parts, counts, n, k,
        HAS_BIAS=bias is not None, CH=ch, STEPS=k // block_k, STAGES=stages, MAX_SEGS=segs,
        EARLY=ring_early(stages), num_warps=warps, **pdl_args(x2))
    return y


def ring_int4_ref(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference on the blocked weights: float32 products of the dequantized values."""
    from kiln.kernels.int4_bits import untile_int4_rows
    from kiln.kernels.quant_ref import int4_wo_linear_ref
    rows = untile_int4_rows(qweight, RING_INT4_ROWS, RING_INT4_GROUP)
    return int4_wo_linear_ref(x2, rows, scales, RING_INT4_GROUP, bias)
