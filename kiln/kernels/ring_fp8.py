"""The batch-1 fp8 (W8A8) GEMV through a shared-memory ring of weight copies, with the products
on the tensor cores (Gluon, sm_90). Opt-in (KILN_RING_FP8=1): correct on an H100, and slower
there than the engine's tc_gemv (ring_fp8_enabled).

y [1, N] = xs * ws[n] * (xq [1, K] . w [n, K]) (+ bias), xq the row's e4m3 codes and xs its
per-token scale (the producer quantized it: quant_act.QuantizedRows), w the engine's e4m3
weights [N, K] row-major with per-row float32 scales ws [N]: the product fp8_linear computes.

It is ring_int4 with fp8 weights, and none of its unpacking (the mma takes the copied words):
- the ring of ring_gemv: P programs (two an SM) cut the layer's units into P equal runs
  (stream-K); each first issues cp.async copies of its first units, then waits for the kernel
  before (PDL), so the copies overlap that kernel's tail. A unit is one block of 16 rows over
  CH chunks of 64 k: 16 runs of CH x 64 bytes of the row-major weights (16 KB with CH = 16).
- the products are one mma.m16n8k32.e4m3.e4m3 (sm_89+) per 32 k of 16 rows, two an
  (chunk, warp). Warp w takes chunks w, w + 4, ... of a unit; lane (g, t) = 4 g + t copies,
  and reads back, row g's and row g + 8's 16 bytes at byte 16 t of a chunk: words W0..W3 and
  U0..U3 (k = 16 t + 4 j .. + 3). The first mma takes A = {W0, U0, W1, U1}, the second
  {W2, U2, W3, U3}: the A fragment's k index 4 t + i holds real k 16 t + i (+ 8 for the
  second mma) and 16 + 4 t + i holds 16 t + 4 + i, a permutation of the sum. B is x at the
  same real k in every column (thread (g, t) holds x's words X0, X1, then X2, X3 of its 16
  bytes), so each lane ends with its rows' sums. x's codes are copied into shared memory once
  a launch as [step, chunk, j, t] words.
- tiles (16 rows) that runs share are finished as in ring_gemv: each run's float32 partial is
  scaled (ws[n] xs: the sum is linear) and the last to arrive adds them in program order.

sm_90 has no e4m3 mma.sync of its own: ptxas turns each m16n8k32 into two HMMA.16816.F32 after
converting both operands to float16 (exact), 12 F2FP a thread an mma, 98 F2FP and 16 HMMA a
unit in the sm_90 SASS (76 registers, 84-96 KB of shared memory). So the products are exact and
summed in float32; the conversions, about one instruction per 1.3 weight bytes, leave the issue
rate far above what memory feeds (measured: it is slower all the same, ring_fp8_enabled).
CUDA sm_90 only; the reference is quant_ref's fp8 product (ring_fp8_ref). Used for one-row
fp8 products where ring_fp8_ok holds and KILN_RING_FP8=1.
"""

from __future__ import annotations

import os

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from kiln.kernels import pdl_args
from kiln.kernels.pdl import pdl_start_gluon
from kiln.kernels.ring_gemv import _finish, _workspace, ring_early
from kiln.kernels.ring_int4 import _fill_layout, _slot_word, _unit_lanes

RING_FP8_ROWS = 16           # rows a tile (the mma's M)
RING_FP8_CHUNK = 64          # k a chunk: one (chunk, warp) is two m16n8k32 mmas
RING_FP8_WARPS = 4
RING_FP8_PER_SM = 2
RING_FP8_MAX_K = 16384       # x's codes take K bytes of shared memory a program
_SMEM_BUDGET = 112 * 1024    # a program's shared memory, two an SM

# $4, $5: row g's words j, j + 1; $6, $7: row g + 8's; $8, $9: x's words j, j + 1; $10..$13: C.
_MMA_E4M3 = gl.constexpr("""
mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32
  {$0, $1, $2, $3}, {$4, $6, $5, $7}, {$8, $9}, {$10, $11, $12, $13};
""")


def ring_fp8_enabled() -> bool:
    """Whether one-row fp8 products take ring_fp8_gemv where it applies (KILN_RING_FP8=1).
    Off by default and not part of the batch-1 ring path an engine's decode-step tuning
    chooses: on an H100 its GPU tests pass, but the fp8 8B engine at batch 1 ran at 247.9
    decode tok/s with it against 289.7 without (-14.4%; its 128 GEMVs 2.96 ms a step against
    tc_gemv's 2.65, kernel spans under PDL; benchmarks/h200-ring, h100-2026-12-06e). Not run
    on the H200."""
    return os.environ.get("KILN_RING_FP8", "0") == "1"


def ring_fp8_chunks(k: int) -> int:
    """Chunks (64 k each) a unit for K, 0 where the kernel does not apply: at least two units a
    row block, K at most RING_FP8_MAX_K."""
    chunks = k // RING_FP8_CHUNK
    for ch in (16, 8):
        if k % RING_FP8_CHUNK == 0 and chunks % ch == 0 and chunks >= 2 * ch and k <= RING_FP8_MAX_K:
            return ch
    return 0


def ring_fp8_config(n: int, k: int) -> tuple[int, int, int, int, int] | None:
    """(BLOCK_N, BLOCK_K, warps, stages, programs an SM) for an [n, k] fp8 weight, or None.
    BLOCK_K is a unit's k (CH chunks); the stages are as many as a program's shared memory
    holds beside x's codes, at most 5 (KILN_RING_STAGES overrides, as for ring_gemv)."""
    ch = ring_fp8_chunks(k)
    if not ch or n % RING_FP8_ROWS:
        return None
    unit = RING_FP8_ROWS * ch * RING_FP8_CHUNK
    stages = min(5, (_SMEM_BUDGET - k) // unit)
    stages = int(os.environ.get("KILN_RING_STAGES", stages))
    per_sm = int(os.environ.get("KILN_RING_PER_SM", RING_FP8_PER_SM))
    return (RING_FP8_ROWS, ch * RING_FP8_CHUNK, RING_FP8_WARPS, stages, per_sm)


def ring_fp8_ok(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                weight_scale: torch.Tensor) -> bool:
    """Whether ring_fp8_gemv takes xq [1, K] e4m3 codes (scale x_scale, one float32) with this
    weight: an sm_90+ GPU, e4m3 weights [N, K] contiguous and 16-byte aligned, float32 scales
    [N], K and N of a configuration."""
    if not (xq.is_cuda and xq.dim() == 2 and xq.shape[0] == 1 and xq.dtype == torch.float8_e4m3fn
            and xq.stride(-1) == 1 and xq.data_ptr() % 16 == 0
            and weight.dtype == torch.float8_e4m3fn and weight.is_contiguous()
            and weight.data_ptr() % 16 == 0 and x_scale.dtype == torch.float32
            and x_scale.numel() >= 1 and weight_scale.dtype == torch.float32
            and weight_scale.is_contiguous()):
        return False
    n, k = weight.shape
    if xq.shape[1] != k or weight_scale.numel() != n:
        return False
    if torch.cuda.get_device_capability(xq.device)[0] < 9:
        return False
    return ring_fp8_config(n, k) is not None


@gluon.jit
def _issue(ring_w, slot, w_ptr, u, valid, steps, row_words, w_offs, CH: gl.constexpr):
    """Copy unit u (16 rows x CH chunks of 64 bytes) into ring slot `slot` (nothing unless
    valid: zero-filled)."""
    tile = u // steps
    ks = u - tile * steps
    base = (tile * 16).to(gl.int64) * row_words + ks * (CH * 16)
    async_copy.async_copy_global_to_shared(ring_w.index(slot), w_ptr + base + w_offs, mask=valid)
    async_copy.commit_group()


@gluon.jit
def _fill_x(x_ptr, x_words, STEPS: gl.constexpr, CH: gl.constexpr):
    """x's codes as words [STEPS, CH, 4 j, 4 t] (word (st CH + c) 16 + 4 t + j) in shared memory."""
    FL: gl.constexpr = _fill_layout(CH, gl.num_warps())
    x32 = x_ptr.to(gl.pointer_type(gl.int32))
    c = gl.arange(0, CH, layout=gl.SliceLayout(1, gl.SliceLayout(2, FL)))[:, None, None]
    j = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, FL)))[None, :, None]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, FL)))[None, None, :]
    for st in gl.static_range(STEPS):
        x_words.index(st).store(gl.load(x32 + (st * CH + c) * 16 + 4 * t + j))
    gl.thread_barrier()


@gluon.jit
def _ring_fp8_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, N, K,
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
    # unswizzled, row-major (a ring's layout is its slot's)
    S5: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1,
                                               order=[4, 3, 2, 1, 0])
    S3: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[2, 1, 0])
    p = gl.program_id(0)
    P = gl.num_programs(0)
    steps = STEPS  # units a tile (K // (64 CH), a constant: no division at run time)
    units = (N // 16) * steps
    u_begin = (p * units) // P
    u_end = ((p + 1) * units) // P
    n_units = u_end - u_begin
    row_words = K // 4

    ring_w = gl.allocate_shared_memory(gl.int32, [STAGES, CH, 2, 8, 4, 4], S5)
    x_words = gl.allocate_shared_memory(gl.int32, [STEPS, CH, 4, 4], S3)

    # copy offsets in words: row 8 h + g of the block, chunk c, byte 16 t + 4 w of the chunk
    wc, wh, wg, wt, ww = _unit_lanes(CH, WCP)
    w_offs = (wh * 8 + wg).to(gl.int64) * row_words + wc * 16 + wt * 4 + ww

    for s in gl.static_range(EARLY):  # weights only: before the wait
        _issue(ring_w, s, w_ptr, u_begin + s, s < n_units, steps, row_words, w_offs, CH)
    if PDL:  # wait, then trigger, whichever PDL value: the early copies are out already
        pdl_start_gluon(1)
    for s in gl.static_range(EARLY, STAGES - 1):
        _issue(ring_w, s, w_ptr, u_begin + s, s < n_units, steps, row_words, w_offs, CH)
    _fill_x(x_ptr, x_words, STEPS, CH)

    t_idx = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))[None, None, :]
    rows_a = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
    rows = gl.join(rows_a, rows_a + 8)
    # x's scale, read after the wait (its producer wrote it), the same for every row
    xs = gl.load(xs_ptr + rows * 0)
    zero_i = gl.zeros([CH, 8, 4], gl.int32, L3)
    zero_f = gl.zeros([CH, 8, 4], gl.float32, L3)
    acc_a = zero_f  # rows g (a) and g + 8 (b) of the tile, every column alike
    acc_b = zero_f
    for i in range(0, n_units):
        _issue(ring_w, (i + STAGES - 1) % STAGES, w_ptr, u_begin + (i + STAGES - 1),
               i + STAGES - 1 < n_units, steps, row_words, w_offs, CH)
        u = u_begin + i
        tile = u // steps
        ks = u - tile * steps
        async_copy.wait_group(STAGES - 1)
        slot_w = ring_w.index(i % STAGES)
        c0 = zero_f
        c1 = zero_f
        c2 = zero_f
        c3 = zero_f
        for jj in gl.static_range(2):  # words 2 jj, 2 jj + 1: one m16n8k32
            wa0 = _slot_word(slot_w, 0, 2 * jj, L5, L3, CH)
            wa1 = _slot_word(slot_w, 0, 2 * jj + 1, L5, L3, CH)
            wb0 = _slot_word(slot_w, 1, 2 * jj, L5, L3, CH)
            wb1 = _slot_word(slot_w, 1, 2 * jj + 1, L5, L3, CH)
            x0 = x_words.index(ks).slice(2 * jj, 1, 1).load(L3) + zero_i
            x1 = x_words.index(ks).slice(2 * jj + 1, 1, 1).load(L3) + zero_i
            c0, c1, c2, c3 = gl.inline_asm_elementwise(
                _MMA_E4M3, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", [wa0, wa1, wb0, wb1, x0, x1, c0, c1, c2, c3],
                dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)
        acc_a += c0
        acc_b += c2
        if (ks == steps - 1) | (i == n_units - 1):  # the tile's last unit, or the run's end
            tot_a = gl.sum(gl.sum(gl.where(t_idx == 0, acc_a, 0.0), axis=2), axis=0)
            tot_b = gl.sum(gl.sum(gl.where(t_idx == 0, acc_b, 0.0), axis=2), axis=0)
            scale = gl.load(ws_ptr + tile * 16 + rows) * xs
            _finish(gl.join(tot_a, tot_b) * scale, tile, p, P, units, steps, bias_ptr, y_ptr,
                    part_ptr, count_ptr, rows, HAS_BIAS, 16, MAX_SEGS)
            acc_a = zero_f
            acc_b = zero_f
    async_copy.wait_group(0)


def ring_fp8_gemv(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                  weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                  out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """xs * ws * (xq [1, K] e4m3 . weight [N, K] e4m3) (+ bias) -> [1, N] of out_dtype (module
    docstring); x_scale's first value is the row's scale. Raises ValueError where it does not
    apply (ring_fp8_ok)."""
    if not ring_fp8_ok(xq, x_scale, weight, weight_scale):
        raise ValueError(f"ring_fp8_gemv takes one row of e4m3 codes on an sm_90 GPU, e4m3 weights "
                         f"[N, K] with float32 scales [N], N a multiple of 16, K a multiple of 1024 "
                         f"from 2048 up to {RING_FP8_MAX_K}; got x {tuple(xq.shape)} {xq.dtype} on "
                         f"{xq.device}, w {tuple(weight.shape)} {weight.dtype}, scales "
                         f"{tuple(weight_scale.shape)} {weight_scale.dtype}")
    n, k = weight.shape
    cfg = ring_fp8_config(n, k)
    _, block_k, warps, stages, _ = cfg
    programs, segs, counts, parts = _workspace(xq.device, n, k, cfg)
    y = torch.empty(1, n, dtype=out_dtype, device=xq.device)
    ch = block_k // RING_FP8_CHUNK
    _ring_fp8_kernel[(programs,)](
        xq, x_scale.reshape(-1), weight.view(torch.int32), weight_scale, bias if bias is not None else y,
        y, parts, counts, n, k, HAS_BIAS=bias is not None, CH=ch, STEPS=k // block_k, STAGES=stages,
        MAX_SEGS=segs, EARLY=ring_early(stages), num_warps=warps, **pdl_args(xq))
    return y


def ring_fp8_ref(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                 weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The reference: float32 products of the codes' values, scaled, (+ bias), rounded once."""
    y = (xq.float() @ weight.float().t()) * x_scale.reshape(-1)[:1].float() * weight_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)
