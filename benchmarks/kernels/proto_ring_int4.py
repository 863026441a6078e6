"""Prototype: the batch-1 int4 weight-only GEMVs of a decode step through a shared-memory ring
of weight copies (Gluon), a launch a phase under PDL, against the engine's int4 GEMV.

Why: the engine's int4 FMA GEMV takes about 55 us a layer of the 8B model (benchmarks/h200-quant,
run-z; 1.78 ms a step) for bytes the copy rate streams in 0.88 ms a step; ncu found it
latency-bound at low occupancy (run-l), and its dot costs only 1.6-2.8 instructions a weight.
A ring decouples the two: the copies of the next STAGES - 1 units are always in flight,
whatever the arithmetic does. The bf16 ring (proto_ring_chain.py) streamed the 8B's GEMVs at
99.5% of copy on an H100.

The kernel (_ring_int4_kernel): P programs (two an SM), stream-K over units (a tile of
BLOCK_N rows x one group of 128 k: BLOCK_N x 16 int32 words of nibbles, kiln's row-major
packed layout, and the tile's BLOCK_N group scales, read from a [K / 128, N] copy of the
scales so that they are one contiguous run). Per unit, after its copies landed and a CTA
barrier (the scales were copied by other threads; the barrier also frees the slot the refill
then takes), each thread takes the product of its own 4 words of a row with x through the
engine's float16 word dot (int4_bits._int4_dot_ptx: nibbles to float16 pairs by lop3, packed
FMAs, two halves summed in float32), times the row's group scale, into float32 accumulators.
x (the phase before's float32 output, rounded to bf16 as the engine's input would be) is laid
out once a launch in shared memory as the word dot's float16 pairs. Outputs: float32 atomics
into the zero-filled output, as the bf16 prototype.

Modes (medians of CUDA-graph replays, one run): engine (quant_matmul.int4_wo_linear on the
row-major weights, autotuned, PDL), engine_rb16 (the same on blocks of 16 rows, the engine's
default layout), ring (a launch a phase, PDL), and the copy bandwidth. Checked phase by phase
against float32 products of each phase's own input (proto_persistent_chain.Chain.check).

    PYTHONPATH=. python benchmarks/kernels/proto_ring_int4.py [--layers 32] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_ring_int4.py --check-only     # GPU, small
    PYTHONPATH=. python benchmarks/kernels/proto_ring_int4.py --compile-only   # sm_90, no GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from kiln.kernels.int4_bits import _int4_dot_ptx

sys.path.insert(0, os.path.dirname(__file__))  # proto_persistent_chain, bench_quant

from proto_persistent_chain import (LAYER, LM_HEAD, Chain, engine_chain,  # noqa: E402
                                    programs_per_sm, time_graph)
from proto_ring_chain import recorder  # noqa: E402

_WORD_DOT = gl.constexpr(_int4_dot_ptx(1))  # word . 4 float16 pairs -> float32
GROUP = 128
# (BLOCK_N, warps, stages, programs an SM): a unit is BLOCK_N x 64 bytes (+ 4 BLOCK_N of scales)
VARIANTS = [(128, 4, 8, 2), (128, 4, 6, 2), (128, 8, 8, 2), (256, 8, 4, 2), (256, 8, 8, 1),
            (512, 8, 4, 1)]
CHECK_VARIANTS = [(128, 4, 4, 2), (256, 8, 3, 1)]
CHECK_SHAPES = [("a", 512, 256), ("b", 768, 512), ("c", 256, 768), ("d", 512, 256),
                ("e", 256, 512)]


@gluon.constexpr_function
def word_layout(warps):
    """[BLOCK_N, 16] int32 words of a unit: each thread 4 consecutive words (16 bytes) of a row,
    4 threads a row's group, 8 rows a warp."""
    return gl.BlockedLayout([1, 4], [8, 4], [warps, 1], [1, 0])


@gluon.jit
def _issue(w_ring, s_ring, slot, w_ptr, st_ptr, u, valid, groups, N, rows, words, srows,
           BLOCK_N: gl.constexpr):
    """Copy unit u's words (row-major packed nibbles, a row K / 8 words) and its BLOCK_N group
    scales (from the [K / 128, N] copy) into ring slot `slot`."""
    tile = u // groups
    g = u - tile * groups
    ptrs = (w_ptr + (tile * BLOCK_N + rows).to(gl.int64)[:, None] * (groups * 16)
            + (g * 16 + words)[None, :])
    async_copy.async_copy_global_to_shared(w_ring.index(slot), ptrs, mask=valid)
    sptrs = st_ptr + g.to(gl.int64) * N + tile * BLOCK_N + srows
    async_copy.async_copy_global_to_shared(s_ring.index(slot), sptrs, mask=valid)
    async_copy.commit_group()


@gluon.jit(do_not_specialize=["ph"])
def _ring_int4_kernel(w_ptr, st_ptr, tab_ptr, y_ptr, ph, BLOCK_N: gl.constexpr,
                      STAGES: gl.constexpr, XP: gl.constexpr, PDL: gl.constexpr):
    # One phase (row ph of the chain's table: w_off in words, N, K, x_off, y_off, scales offset)
    # of y += W x with W int4 (group 128, row-major words), x float32 rounded to bf16.
    L: gl.constexpr = word_layout(gl.num_warps())
    SL: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    SMEM: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    SMEM1: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    XL: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    p = gl.program_id(0)
    P = gl.num_programs(0)
    row = tab_ptr + ph * 6
    w_base = w_ptr + gl.multiple_of(gl.load(row), 64)
    N = gl.load(row + 1).to(gl.int32)
    K = gl.load(row + 2).to(gl.int32)
    x_base = y_ptr + gl.load(row + 3)
    y_base = y_ptr + gl.load(row + 4)
    st_base = st_ptr + gl.load(row + 5)
    groups = K // 128
    units = (N // BLOCK_N) * groups
    u_begin = (p * units) // P
    u_end = ((p + 1) * units) // P
    n_units = u_end - u_begin
    rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L))
    words = gl.arange(0, 16, layout=gl.SliceLayout(0, L))
    srows = gl.arange(0, BLOCK_N, layout=SL)
    w_ring = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, 16], SMEM)
    s_ring = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_N], SMEM1)
    # x as the word dot's float16 pairs: pair i of 8-block j (k = 8 j .. 8 j + 7) is
    # (x[8 j + i], x[8 j + i + 4]), at xp_flat[i * XP + j]; a group's 16 blocks are one row of
    # xp (index i * XP / 16 + g)
    xp_flat = gl.allocate_shared_memory(gl.int32, [4 * XP], SMEM1)
    xp = xp_flat._reinterpret(gl.int32, [4 * XP // 16, 16], SMEM1)

    for s in gl.static_range(STAGES - 1):  # weights and scales only: before the wait
        _issue(w_ring, s_ring, s, w_base, st_base, u_begin + s, s < n_units, groups, N, rows,
               words, srows, BLOCK_N)
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)
    blocks = gl.arange(0, XP, layout=XL)
    ok = blocks < K // 8
    for i in gl.static_range(4):
        lo = gl.load(x_base + 8 * blocks + i, mask=ok, other=0.0)
        hi = gl.load(x_base + 8 * blocks + i + 4, mask=ok, other=0.0)
        lo16 = lo.to(gl.bfloat16).to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        hi16 = hi.to(gl.bfloat16).to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32)
        xp_flat.slice(i * XP, XP).store(lo16 | (hi16 << 16))
    gl.thread_barrier()

    acc = gl.zeros([BLOCK_N, 16], gl.float32, L)
    for i in range(0, n_units):
        u = u_begin + i
        tile = u // groups
        g = u - tile * groups
        async_copy.wait_group(STAGES - 2)
        gl.thread_barrier()  # unit i's copies visible to all; slot i - 1 read by all
        _issue(w_ring, s_ring, (i + STAGES - 1) % STAGES, w_base, st_base, u + STAGES - 1,
               i + STAGES - 1 < n_units, groups, N, rows, words, srows, BLOCK_N)
        wv = w_ring.index(i % STAGES).load(L)
        sc = s_ring.index(i % STAGES).load(gl.SliceLayout(1, L))
        p0 = xp.index(0 * (XP // 16) + g).load(gl.SliceLayout(0, L))
        p1 = xp.index(1 * (XP // 16) + g).load(gl.SliceLayout(0, L))
        p2 = xp.index(2 * (XP // 16) + g).load(gl.SliceLayout(0, L))
        p3 = xp.index(3 * (XP // 16) + g).load(gl.SliceLayout(0, L))
        zero = gl.zeros([BLOCK_N, 16], gl.int32, L)
        dot = gl.inline_asm_elementwise(
            _WORD_DOT, "=r,r,r,r,r,r",
            [wv, p0[None, :] + zero, p1[None, :] + zero, p2[None, :] + zero, p3[None, :] + zero],
            dtype=gl.float32, is_pure=True, pack=1)
        acc += dot * sc[:, None]
        if (g == groups - 1) | (i == n_units - 1):
            offs = tile * BLOCK_N + rows
            gl.atomic_add(y_base + offs, gl.sum(acc, axis=1), sem="relaxed")
            acc = gl.zeros([BLOCK_N, 16], gl.float32, L)
    async_copy.wait_group(0)


def scales_kn(chain: Chain) -> tuple[torch.Tensor, list[int]]:
    """Every phase's group scales as [K / 128, N] (one run of N a group), in one buffer, with
    each phase's offset into it."""
    parts, offs, at = [], [], 0
    for ph in range(len(chain.rows)):
        s = chain.w_scales(ph).t().contiguous().reshape(-1)
        parts.append(s)
        offs.append(at)
        at += s.numel()
    return torch.cat(parts), offs


class RingInt4:
    """The chain's int4 phases launched through _ring_int4_kernel (its own table: scales
    offsets into the [K / 128, N] copy)."""

    def __init__(self, chain: Chain):
        self.chain = chain
        self.st, offs = scales_kn(chain)
        table = chain.table.clone()
        table[:, 5] = torch.tensor(offs, dtype=torch.int64, device=table.device)
        self.table = table
        # 8-blocks of the largest input, to a power of two (gl.arange)
        self.xp = 1 << (max(k for _, _, k in chain.shapes) // 8 - 1).bit_length()

    def launch(self, variant: tuple, programs: int, ph: int, pdl: bool) -> None:
        block_n, warps, stages, _ = variant
        units = (self.chain.rows[ph][1] // block_n) * (self.chain.rows[ph][2] // GROUP)
        _ring_int4_kernel[(min(programs, units),)](
            self.chain.w, self.st, self.table, self.chain.y, ph, BLOCK_N=block_n, STAGES=stages,
            XP=self.xp, PDL=pdl, num_warps=warps, **({"launch_pdl": True} if pdl else {}))

    def run(self, variant: tuple, programs: int, pdl: bool = True) -> None:
        self.chain.reset()
        for ph in range(len(self.chain.rows)):
            self.launch(variant, programs, ph, pdl)

    def fits(self, variant: tuple) -> int:
        block_n, warps, stages, _ = variant
        kern = _ring_int4_kernel.warmup(self.chain.w, self.st, self.table, self.chain.y, 0,
                                        BLOCK_N=block_n, STAGES=stages, XP=self.xp, PDL=True,
                                        num_warps=warps, grid=(1,))
        return programs_per_sm(kern, warps, variant)


def compile_only() -> None:
    import compile_sm90
    ptrs = {"w_ptr": "*i32", "st_ptr": "*fp32", "tab_ptr": "*i64", "y_ptr": "*fp32"}
    for variant in VARIANTS + CHECK_VARIANTS:
        block_n, warps, stages, _ = variant
        kern = compile_sm90.compile_one(
            _ring_int4_kernel, {"BLOCK_N": block_n, "STAGES": stages, "XP": 2048,
                                "PDL": True, "_ptrs": ptrs}, "bf16", warps, 1)
        print(variant, compile_sm90.resources(kern), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants", help="a Python list of variant tuples instead of VARIANTS")
    ap.add_argument("--json")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    if args.compile_only:
        compile_only()
        return 0
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if args.check_only:
        bad = 0
        chain = Chain(CHECK_SHAPES, "cuda", kind="int4")
        ring = RingInt4(chain)
        for variant in CHECK_VARIANTS:
            ring.fits(variant)
            for programs in (1, 3, 7, sms, 2 * sms):
                for pdl in (False, True):
                    ring.run(variant, programs, pdl)
                    err = chain.check(chain.outputs())
                    bad += err >= 2e-3
                    print(f"  ring int4 {variant} programs {programs} pdl {pdl}: rel err "
                          f"{err:.2e} {'ok' if err < 2e-3 else 'WRONG'}", flush=True)
        print("all correct" if not bad else f"{bad} wrong")
        return 1 if bad else 0

    import bench_quant
    from kiln.kernels import pdl_scope
    variants = VARIANTS
    if args.variants:
        import ast
        variants = [tuple(v) for v in ast.literal_eval(args.variants)]
    t0 = time.time()
    ceil = bench_quant.ceilings()
    copy = ceil["copy_GBps"]
    chain = Chain(LAYER * args.layers + [LM_HEAD], "cuda", kind="int4")
    gb = chain.weight_bytes / 1e9
    nph = len(chain.rows)
    print(f"copy {copy:.0f} GB/s; {nph} phases, {gb:.2f} GB (int4 + scales): "
          f"{gb / copy * 1e3:.3f} ms at copy", flush=True)
    rec = recorder(args, ceil, gb, nph, t0, 34)

    for name, row_block in (("engine", 1), ("engine_rb16", 16)):
        run, outs = engine_chain(chain, row_block)
        with pdl_scope(True):
            ms = time_graph(run, args.reps)
        rec(name, "int4_wo_linear (autotuned, PDL)", ms, chain.check(outs, 0))
        del run, outs
        torch.cuda.empty_cache()
    ring = RingInt4(chain)
    for variant in variants:
        try:
            room = ring.fits(variant)
        except Exception as exc:  # a variant that does not compile is reported, not fatal
            print(f"{variant}: does not compile: {str(exc).splitlines()[0][:300]}", flush=True)
            continue
        if room < variant[3]:
            print(f"{variant}: {room} programs fit an SM, not {variant[3]}", flush=True)
        ms = time_graph(lambda: ring.run(variant, sms * variant[3]), args.reps)
        rec("ring", variant, ms, chain.check(chain.outputs()), "a launch a phase, PDL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
