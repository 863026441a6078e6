"""int4 weight-only GEMV for decode rows (up to 8) on the tensor cores, written in Gluon (Triton's
explicit-layout dialect) so that the unpacked weights land in the matrix operand's registers
without moving.

Why: kiln's FMA GEMV (kiln.kernels.quant_matmul) spends about 2.8 instructions a weight on
unpacking, converting and multiplying (sm_90 SASS of its loop), and at batch 1 it streams the 8B
model's int4 weights at about half the copy bandwidth, latency-bound at low occupancy. Here the
unpacking costs 1.375 instructions a weight for bfloat16 x (per word of eight: three shifts, four
mask-and-ors, four packed FMAs taking the offset off: kiln.kernels.INT4X8_BF16_PAIRS_PTX, which
the FMA GEMV's unpacking shares) and 1.125 for float16 x (one shift: see _INT4X8_F16_ASM), the
products run on the tensor cores (mma.sync m16n8k16, float32 out, one instruction per 256
weights), and a ring of shared-memory slots keeps STAGES - 1 groups of every program's rows in
flight. The whole loop is 2.97, 2.44 and 2.14 instructions a weight at 16, 32 and 64 rows a
program for bfloat16, 2.72, 2.19 and 1.89 for float16 (compile_sm90.py), so the small layers need
several programs an SM issuing at once: K is split for them (default_tile).

Layout. One program is one warp and ROWS output rows (16, 32 or 64) over one of SPLIT equal runs
of K's groups (the last program of a row tile sums the float32 partials in split order). The packed
weights, qweight [N, K // 2] uint8 (byte b of a row holds k = 2 b in its low nibble and 2 b + 1 in
its high one), are read as int32 words, one scale group of 128 k (64 bytes, 16 words a row) at a
time, copied (cp.async) into a ring of STAGES shared-memory slots STAGES - 1 groups ahead. Lane
4 g + c of the warp takes words 4 c .. 4 c + 3 of rows g and g + 8 of each 16 (one 16-byte read
each): k = 32 c + 8 i + p for word i, nibble p. The unpacking gives, per word and shift s (0..3),
one pair in x's dtype: nibbles p = s and s + 4, as (128 + n) - 136 = n - 8 in bfloat16, exact
(float16: see _INT4X8_F16_ASM). The matrix k index
kk = 32 i + 16 s1 + 8 s0 + 2 c + e (s = 2 s1 + s0, e the pair's half) is where the operand layout
wants exactly those registers, so k is permuted: kk holds k = 32 c + 8 i + s + 4 e, and x is
loaded under the same permutation (each lane reads 32 contiguous x values of its row, the B
operand's column g). The dot of a group is taken in float32 and scaled per row.

The dispatcher is kiln.kernels.quant_matmul's int4_wo_linear (KILN_INT4_MMA=1); the reference
its int4_wo_linear_ref. CUDA sm_90+ (packed bfloat16 FMA, fma.rn.bf16x2), group size 128.
tests/kernels/test_kernel_int4_gluon.py interprets the unpacking asm and replays the permutation
in numpy; tests/gpu/test_int4_gluon_gpu.py runs the kernel.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from kiln.kernels import INT4X8_BF16_PAIRS_PTX
from kiln.kernels.gluon_common import A_OPERAND as _A_OP
from kiln.kernels.gluon_common import B_OPERAND as _B_OP
from kiln.kernels.gluon_common import MMA as _MMA
from kiln.kernels.gluon_common import gluon_pdl_start

GROUP = 128       # k of one scale group, one step of the kernel
_GROUP = gl.constexpr(GROUP)
MAX_ROWS = 8      # decode rows (x rows) one launch takes: the n side of the m16n8 tiles

# Word w of a lane's four (nibbles p = 0..7 at bits 4 p) -> bfloat16 pairs (n - 8) for
# p = (s, s + 4), s = 0..3: INT4X8_BF16_PAIRS_PTX's pairs, split into the eight outputs.
_INT4X8_BF16_ASM = gl.constexpr(INT4X8_BF16_PAIRS_PTX + """mov.b32 {$0, $1}, kq0;
mov.b32 {$2, $3}, kq1;
mov.b32 {$4, $5}, kq2;
mov.b32 {$6, $7}, kq3;
}
""")

# The operands' k permutation as the kernel builds it (tests/kernels/test_kernel_int4_gluon.py
# replays these steps in numpy): the unpacked words [row, 16 words, e, s0, s1] are reshaped to
# W_SPLIT and permuted by W_PERM into [row, i, s1, s0, c, e]; x [n, 4 lanes c, 32] is reshaped to
# X_SPLIT and permuted by X_PERM into [i, s1, s0, c, e, n]. Both flatten to kk.
W_SPLIT = (4, 4, 2, 2, 2)          # after the row: c, i, e, s0, s1
W_PERM = (0, 2, 5, 4, 1, 3)
X_SPLIT = (8, 4, 4, 2, 2, 2)       # n, c, i, e, s1, s0
X_PERM = (2, 4, 5, 1, 3, 0)
_W_PERM = gl.constexpr(W_PERM)
_X_PERM = gl.constexpr(X_PERM)

# The float16 form (x float16): nibbles at bits 0-3 of a half OR'd into 1024.0 (0x6400) and
# 1032 taken off; those at bits 4-7 OR'd in as 1024 + 16 n and mapped by (v / 16) - 72, both
# exact, which saves two of the three shifts.
_INT4X8_F16_ASM = gl.constexpr("""
{
.reg .b32 t2, r0, r1, r2, r3, z, h, o;
mov.b32 z, 0x64086408;
mov.b32 h, 0x2c002c00;
mov.b32 o, 0xd480d480;
shr.b32 t2, $8, 8;
lop3.b32 r0, $8, 0x000f000f, 0x64006400, 0xea;
lop3.b32 r1, $8, 0x00f000f0, 0x64006400, 0xea;
lop3.b32 r2, t2, 0x000f000f, 0x64006400, 0xea;
lop3.b32 r3, t2, 0x00f000f0, 0x64006400, 0xea;
sub.f16x2 r0, r0, z;
fma.rn.f16x2 r1, r1, h, o;
sub.f16x2 r2, r2, z;
fma.rn.f16x2 r3, r3, h, o;
mov.b32 {$0, $1}, r0;
mov.b32 {$2, $3}, r1;
mov.b32 {$4, $5}, r2;
mov.b32 {$6, $7}, r3;
}
""")

# The ring's copies (16-byte vectors) and slots (dense rows: a lane's 16-byte reads of rows g,
# g + 1 fall in distinct banks). One warp's mma layouts (_MMA, _A_OP, _B_OP) come from
# gluon_common.
_COPY = gl.constexpr(gl.BlockedLayout([1, 4], [8, 4], [1, 1], [1, 0]))
_SMEM = gl.constexpr(gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0]))
# x of a group: lane 4 g + c holds x row g, k 32 c .. 32 c + 31 (four 16-byte reads)
_X = gl.constexpr(gl.BlockedLayout([1, 1, 32], [8, 4, 1], [1, 1, 1], [2, 1, 0]))


@gluon.constexpr_function
def word_layout(rows):
    """Register layout of a group's words [rows, 16]: lane 4 g + c holds words 4 c .. 4 c + 3 of
    rows 8 n + g."""
    rows = int(getattr(rows, "value", rows))
    steps = [[8 << b, 0] for b in range(rows.bit_length() - 4)]
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2]] + steps,
        lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]], warp_bases=[], block_bases=[],
        shape=[rows, 16])


@gluon.jit
def _weights_operand(words, ROWS: gl.constexpr, X_F16: gl.constexpr):
    """A group's words [ROWS, 16] (word_layout) -> the A operand [ROWS, 128 permuted k] of
    n - 8 in x's dtype (bfloat16, or float16 with X_F16), no data movement:
    kk = 32 i + 16 s1 + 8 s0 + 2 c + e holds nibble s + 4 e (s = 2 s1 + s0) of word 4 c + i."""
    if X_F16:
        o0, o1, o2, o3, o4, o5, o6, o7 = gl.inline_asm_elementwise(
            _INT4X8_F16_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words], dtype=(gl.float16,) * 8,
            is_pure=True, pack=1)
    else:
        o0, o1, o2, o3, o4, o5, o6, o7 = gl.inline_asm_elementwise(
            _INT4X8_BF16_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words], dtype=(gl.bfloat16,) * 8,
            is_pure=True, pack=1)
    # o(2 s + e) is nibble s + 4 e; a join adds its index as the last dim: [row, word, e, s0, s1]
    w = gl.join(gl.join(gl.join(o0, o1), gl.join(o2, o3)),
                gl.join(gl.join(o4, o5), gl.join(o6, o7)))
    w = gl.reshape(w, [ROWS, 4, 4, 2, 2, 2])                 # [row, c, i, e, s0, s1]
    w = gl.permute(w, _W_PERM.value)                         # [row, i, s1, s0, c, e]
    w = gl.reshape(w, [ROWS, _GROUP])
    return gl.convert_layout(w, _A_OP, assert_trivial=True)


@gluon.jit
def _x_operand(x_ptr, stride_xm, M, k0):
    """x rows [M <= 8] at k0 .. k0 + 127 -> the B operand [128 permuted k, 8] (rows past M zero):
    kk = 32 i + 16 s1 + 8 s0 + 2 c + e holds k = 32 c + 8 i + s + 4 e."""
    n = gl.arange(0, 8, layout=gl.SliceLayout(1, gl.SliceLayout(2, _X)))
    c = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, _X)))
    e32 = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(1, _X)))
    offs = (n[:, None, None] * stride_xm + k0 + c[None, :, None] * 32 + e32[None, None, :])
    x = gl.load(x_ptr + offs, mask=(n < M)[:, None, None], other=0.0)   # [n, c, 32]
    x = gl.reshape(x, [8, 4, 4, 2, 2, 2])                    # [n, c, i, e, s1, s0]
    x = gl.permute(x, _X_PERM.value)                         # [i, s1, s0, c, e, n]
    x = gl.reshape(x, [_GROUP, 8])
    return gl.convert_layout(x, _B_OP, assert_trivial=True)


@gluon.jit
def _issue_group(slot, w_words, rows, row_ok, stride_w, g):
    """Start copying group g's words of the program's rows into a ring slot (one commit group)."""
    cols = gl.arange(0, 16, layout=gl.SliceLayout(0, _COPY))
    ptrs = w_words + rows.to(gl.int64)[:, None] * stride_w + g * 16 + cols[None, :]
    async_copy.async_copy_global_to_shared(slot, ptrs, mask=row_ok[:, None] & (cols < 16)[None, :])
    async_copy.commit_group()


@gluon.jit(do_not_specialize=["M"])
def int4_mma_gemv_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr, M, N, K,
                         stride_xm, stride_w, stride_s, stride_om, ROWS: gl.constexpr,
                         STAGES: gl.constexpr, SPLIT: gl.constexpr, HAS_BIAS: gl.constexpr,
                         PDL: gl.constexpr = False):
    # Program (pid, pid_k): rows [pid * ROWS, pid * ROWS + ROWS) of out^T over the pid_k-th of
    # SPLIT equal runs of K's groups. stride_w: a weight row's int32 words. The weights depend on
    # no earlier kernel: the ring starts before the PDL wait. With SPLIT > 1 each program leaves
    # its float32 partial in part [SPLIT, M, N] and the last of a row tile's programs to arrive
    # (counter lock_ptr[pid], re-armed) sums them in split order, so the bits do not depend on
    # the arrival order.
    WL: gl.constexpr = word_layout(ROWS)
    pid = gl.program_id(0)
    pid_k = gl.program_id(1)
    total_groups = K // 128
    per_split = (total_groups + SPLIT - 1) // SPLIT
    g0 = pid_k * per_split
    groups = gl.minimum(per_split, total_groups - g0)
    copy_rows = pid * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, _COPY))
    copy_ok = copy_rows < N
    w_words = w_ptr.to(gl.pointer_type(gl.int32))
    ring = gl.allocate_shared_memory(gl.int32, [STAGES, ROWS, 16], _SMEM)
    for j in gl.static_range(STAGES - 1):
        _issue_group(ring.index(j), w_words, copy_rows, copy_ok & (j < groups), stride_w, g0 + j)
    gluon_pdl_start(PDL)

    rows = pid * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, _MMA))
    row_ok = rows < N
    s_row = s_ptr + rows.to(gl.int64) * stride_s + g0
    acc = gl.zeros([ROWS, 8], gl.float32, layout=_MMA)
    scale = gl.load(s_row, mask=row_ok & (groups > 0), other=0.0)
    for j in range(groups):
        async_copy.wait_group(STAGES - 2)
        gl.thread_barrier()  # every lane's copies of group j landed; slot j - 1 is free
        nxt = j + STAGES - 1
        _issue_group(ring.index(nxt % STAGES), w_words, copy_rows, copy_ok & (nxt < groups),
                     stride_w, g0 + nxt)
        nxt_scale = gl.load(s_row + j + 1, mask=row_ok & (j + 1 < groups), other=0.0)
        a = _weights_operand(ring.index(j % STAGES).load(WL), ROWS,
                             x_ptr.dtype.element_ty == gl.float16)
        b = _x_operand(x_ptr, stride_xm, M, (g0 + j) * 128)
        part = mma_v2(a, b, gl.zeros([ROWS, 8], gl.float32, layout=_MMA))
        acc += part * scale[:, None]
        scale = nxt_scale
    async_copy.wait_group(0)

    cols = gl.arange(0, 8, layout=gl.SliceLayout(0, _MMA))
    mask = row_ok[:, None] & (cols < M)[None, :]
    if SPLIT > 1:
        gl.store(part_ptr + (pid_k * M + cols[None, :]).to(gl.int64) * N + rows[:, None], acc,
                 mask=mask)
        gl.thread_barrier()  # every lane's partial stores precede the release below
        arrived = gl.atomic_add(lock_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            gl.thread_barrier()
            acc = gl.zeros([ROWS, 8], gl.float32, layout=_MMA)
            for k in gl.static_range(SPLIT):
                # other programs wrote most of these: read them from L2 (.cg), past this SM's L1
                acc += gl.load(part_ptr + (k * M + cols[None, :]).to(gl.int64) * N
                               + rows[:, None], mask=mask, other=0.0, cache_modifier=".cg")
            _store_out(acc, bias_ptr, out_ptr, rows, row_ok, cols, mask, stride_om, HAS_BIAS)
            gl.atomic_xchg(lock_ptr + pid, 0, sem="relaxed", scope="gpu")
    else:
        _store_out(acc, bias_ptr, out_ptr, rows, row_ok, cols, mask, stride_om, HAS_BIAS)


@gluon.jit
def _store_out(acc, bias_ptr, out_ptr, rows, row_ok, cols, mask, stride_om,
               HAS_BIAS: gl.constexpr):
    """out[m, row] = acc[row, m] (+ bias[row]) in out's dtype."""
    if HAS_BIAS:
        acc += gl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(gl.float32)[:, None]
    gl.store(out_ptr + cols[None, :] * stride_om + rows[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=mask)


def int4_mma_enabled() -> bool:
    """KILN_INT4_MMA=1: int4 weight-only decode rows (up to 8, groups of 128, bfloat16 or float16
    x) take int4_mma_gemv. Off by default: not yet measured on an H200."""
    return os.environ.get("KILN_INT4_MMA", "0") == "1"


@functools.lru_cache(maxsize=None)
def _sm90(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def int4_mma_ok(x2: torch.Tensor, qweight: torch.Tensor, group: int) -> bool:
    """Whether int4_mma_gemv takes this product: CUDA sm_90+, at most MAX_ROWS bfloat16 or
    float16 rows with contiguous k, groups of 128, weight rows 16-byte aligned."""
    return (x2.is_cuda and _sm90(x2.device.index if x2.device.index is not None
                                 else torch.cuda.current_device())
            and x2.dtype in (torch.bfloat16, torch.float16) and 0 < x2.shape[0] <= MAX_ROWS and x2.stride(1) == 1
            and group == GROUP and x2.shape[1] % GROUP == 0 and qweight.data_ptr() % 16 == 0
            and qweight.stride(0) % 16 == 0 and qweight.stride(1) == 1)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_tile(n: int, k: int, sms: int) -> tuple[int, int, int]:
    """(rows, ring slots, K splits) of a launch over n output rows and k inputs. A warp issues at
    most one instruction a cycle and the loop takes 2-3 a weight, so streaming at the copy rate
    needs about six warps an SM issuing: 16 rows and 8 slots up to n = 8192, 32 and 6 above,
    and as many K splits (each at least 4 groups) as bring the programs to about 6 an SM. A
    first guess, to be set from `sweep_gemv.py --schemes int4-mma` on the H200."""
    rows, stages = (16, 8) if n <= 8192 else (32, 6)
    tiles = -(-n // rows)
    split = max(1, min(-(-6 * sms // tiles), k // GROUP // 4))
    return rows, stages, split


def int4_mma_gemv(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None, tile: tuple[int, int, int] | None = None,
                  pdl: dict | None = None, locks: torch.Tensor | None = None) -> torch.Tensor:
    """x2 [M <= 8, K] bfloat16 or float16 @ dequant(qweight [N, K // 2], scales [N, K // 128]
    float32).T (+ bias) -> [M, N] of x2's dtype (see the module doc; check int4_mma_ok first).
    tile: (rows, ring slots, K splits), default_tile's unless given. locks: zeroed int32 arrival
    counters, one per row tile (kiln.kernels.quant_matmul.split_locks), which a split K needs;
    without them K is not split."""
    m, k = x2.shape
    n = qweight.shape[0]
    rows, stages, split = tile or default_tile(n, k, _num_sms(
        x2.device.index if x2.device.index is not None else torch.cuda.current_device()))
    assert rows in (16, 32, 64) and stages >= 2 and split >= 1 and scales.dtype == torch.float32
    tiles = triton.cdiv(n, rows)
    if locks is None or locks.numel() < tiles:
        split = 1
    split = min(split, k // GROUP)
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    part = (torch.empty(split, m, n, dtype=torch.float32, device=x2.device) if split > 1
            else out)
    pdl = pdl or {}
    has_bias = bias is not None
    int4_mma_gemv_kernel[(tiles, split)](
        x2, qweight, scales, bias if has_bias else out, out, part,
        locks if split > 1 else out, m, n, k, x2.stride(0), qweight.stride(0) // 4,
        scales.stride(0), out.stride(0), ROWS=rows, STAGES=stages, SPLIT=split,
        HAS_BIAS=has_bias, PDL=bool(pdl.get("PDL")), num_warps=1,
        **({"launch_pdl": True} if pdl.get("launch_pdl") else {}))
    return out
