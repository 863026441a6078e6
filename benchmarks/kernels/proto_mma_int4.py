"""Prototype: the batch-1 int4 weight-only GEMV on the tensor cores straight from registers
(Gluon, mma.sync in inline PTX), against the engine's int4 GEMV, over the 8B's 129 GEMVs.

Why: the engine's int4 FMA GEMV streams the 8B's int4 GEMVs at about 51% of the copy rate, and
the shared-memory ring of copies (proto_ring_int4.py) tied it: with its loads always in flight
it was no faster, so the int4 GEMV is bound by its instructions (about 2-4 a weight: nibbles to
float16 pairs, packed FMAs, float32 sums, scales), not by load latency.

The kernel (_mma_int4_kernel) does a weight in about one instruction. The weights are stored
once (pack_mma_int4) in the order of mma.m16n8k16's A fragments: for a 16-row tile and a step of
16 k, lane l's 32-bit word holds exactly the 8 values of its fragment, so a thread's words go
from memory to registers (16-byte loads, R tiles a load) and from there to the tensor cores with
no shared memory. A word becomes its four bfloat16 pairs by 3 shifts and 4 lop3 (each nibble n
OR'd into bfloat16 128.0 gives 128 + n exactly); the offset is taken off once a group instead of
once a weight: sum (128 + n) x - 136 sum x = sum (n - 8) x, with sum x over the group from one
more mma (A all ones) a step. x is the B operand, the same in all 8 columns (each lane's B words
depend only on lane % 4), so every column of the product is W x. The k order inside a group is
permuted (the same on both sides) so that lane l reads its x as one run of 16 words a group.
Scales: one float32 per row and group, stored per tile as each lane reads them.

A program owns 16 R rows and a range of the groups (grid: row blocks x K splits); its warps
take consecutive groups; float32 atomics into a zero-filled output (as the ring prototypes).
Modes (medians of CUDA-graph replays): engine (quant_matmul.int4_wo_linear, blocks of 16 rows,
the engine's default, autotuned, PDL) and mma (variants R, warps, programs an SM, early).

    PYTHONPATH=. python benchmarks/kernels/proto_mma_int4.py [--layers 32] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_mma_int4.py --check-only     # GPU, small
    PYTHONPATH=. python benchmarks/kernels/proto_mma_int4.py --compile-only   # sm_90, no GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

G = 128  # k a group (host code)
GROUP = gl.constexpr(G)
STEPS = gl.constexpr(8)  # mma k steps a group

# Word $3 -> the four bfloat16 pairs of lane's A fragment (128 + nibble, exact), then
# D = A B + C with B = ($4, $5) and C = ($6 .. $9); D in $0 .. $3 (c0 c1: row g, c2 c3: row g + 8).
_MMA_WORD = gl.constexpr("""
{
.reg .b32 ka0, ka1, ka2, ka3, ks1, ks2, ks3;
shr.u32 ks1, $4, 4;
shr.u32 ks2, $4, 8;
shr.u32 ks3, $4, 12;
lop3.b32 ka0, $4, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 ka1, ks1, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 ka2, ks2, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 ka3, ks3, 0x000F000F, 0x43004300, 0xEA;
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {ka0, ka1, ka2, ka3}, {$5, $6}, {$7, $8, $9, $10};
}
""")
# sum x over the step's 16 k (A all ones) added to C: every element of D holds it.
_MMA_ONES = gl.constexpr("""
{
.reg .b32 kone;
mov.b32 kone, 0x3F803F80;
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {kone, kone, kone, kone}, {$4, $5}, {$6, $7, $8, $9};
}
""")

# (R tiles of 16 rows a warp, warps, programs an SM (sets the K split), early loads)
VARIANTS = [(4, 4, 4, 1), (4, 4, 4, 0), (2, 4, 8, 1), (8, 4, 2, 1), (4, 8, 2, 1)]
CHECK_VARIANTS = [(4, 4, 4, 0), (2, 8, 4, 1), (4, 4, 8, 1), (8, 4, 2, 1)]
LAYER = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
LM_HEAD = ("lm_head", 128256, 4096)
CHECK_SHAPES = [("a", 512, 256), ("b", 768, 1024), ("c", 256, 768), ("d", 128, 4096)]


def pack_mma_int4(q: torch.Tensor, scales: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine-layout int4 weights (uint8 [N, K // 2], byte j: k = 2j low nibble, 2j + 1 high, as
    q + 8) and float32 scales [N, K // 128] -> (int32 words [N / 16r, K / 128, 8, 32, r],
    float32 scales [N / 16r, K / 128, 2, 8, r]) in _mma_int4_kernel's order.

    Word (block, group, step s, lane l = 4 g + t, tile j) holds, for rows a = 16 j + g and
    b = a + 8 of the block and k = 128 group + 32 t + 4 s + (0..3): nibble 0, 4, 2, 6 = row a at
    k + 0, 1, 2, 3 and nibble 1, 5, 3, 7 = row b at the same k (the A fragment pairs a0a1, a2a3,
    a4a5, a6a7 are nibbles (0, 4), (1, 5), (2, 6), (3, 7) after the word's shifts)."""
    n, k = q.shape[0], q.shape[1] * 2
    if n % (16 * r) or k % G:
        raise ValueError(f"N {n} must be a multiple of {16 * r} and K {k} of {G}")
    nib = torch.stack((q & 15, q >> 4), dim=-1).reshape(n, k).to(torch.int64)
    # rows: (block, tile j, half h, g); k: (group, t, s, i)
    v = nib.reshape(n // (16 * r), r, 2, 8, k // G, 4, 8, 4)
    # -> (block, group, s, g, t, j, h, i)
    v = v.permute(0, 4, 6, 3, 5, 1, 2, 7)
    shift = torch.tensor([[0, 4, 2, 6], [1, 5, 3, 7]], device=q.device) * 4  # [h, i] -> nibble
    words = (v << shift).sum(dim=(-1, -2))  # (block, group, s, g, t, j)
    words = words.reshape(n // (16 * r), k // G, 8, 32, r)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    s = scales.float().reshape(n // (16 * r), r, 2, 8, k // G).permute(0, 4, 2, 3, 1)
    return words.contiguous(), s.contiguous()


@gluon.jit
def _load_step(wp, mask):
    return gl.load(wp, mask=mask, other=0)


@gluon.jit
def _mma_int4_kernel(w_ptr, s_ptr, x_ptr, y_ptr, K, R: gl.constexpr, EARLY: gl.constexpr,
                     PDL: gl.constexpr):
    # y[16 R rows of block pid 0] += W x over groups [g0, g1) of split pid 1 (x bf16 [K] read as
    # int32 words of pairs; y float32, zero-filled). Warp w takes groups g0 + w, g0 + w + NW, ...
    NW: gl.constexpr = gl.num_warps()
    L: gl.constexpr = gl.BlockedLayout([1, 1, R], [1, 32, 1], [NW, 1, 1], [2, 1, 0])
    blk = gl.program_id(0)
    split = gl.program_id(1)
    nsplit = gl.num_programs(1)
    groups = K // GROUP
    g0 = split * groups // nsplit
    g1 = (split + 1) * groups // nsplit
    warp = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, L)))[:, None, None]
    lane = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, L)))[None, :, None]
    tile = gl.arange(0, R, layout=gl.SliceLayout(0, gl.SliceLayout(1, L)))[None, None, :]
    t = lane % 4
    gq = lane // 4
    zero_i = gl.zeros([NW, 32, R], gl.int32, L)
    zero_f = gl.zeros([NW, 32, R], gl.float32, L)
    zero_x = gl.zeros([NW, 32, 1], gl.float32, L)
    blk_words = w_ptr + blk.to(gl.int64) * (groups * STEPS * 32 * R)
    blk_scales = s_ptr + blk.to(gl.int64) * (groups * 16 * R)
    xw = x_ptr.to(gl.pointer_type(gl.int32))
    acc_a = zero_f
    acc_b = zero_f
    gw = g0 + warp  # this warp's group, [NW, 1, 1]
    ok = gw < g1
    wp = blk_words + gw.to(gl.int64) * (STEPS * 32 * R) + lane * R + tile
    if EARLY:  # the first group's weights before waiting for the kernel before
        w0 = _load_step(wp + 0 * 32 * R, ok)
        w1 = _load_step(wp + 1 * 32 * R, ok)
        w2 = _load_step(wp + 2 * 32 * R, ok)
        w3 = _load_step(wp + 3 * 32 * R, ok)
        w4 = _load_step(wp + 4 * 32 * R, ok)
        w5 = _load_step(wp + 5 * 32 * R, ok)
        w6 = _load_step(wp + 6 * 32 * R, ok)
        w7 = _load_step(wp + 7 * 32 * R, ok)
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)
    for g in range(g0, g1, NW):
        gw = g + warp
        ok = gw < g1
        if EARLY:  # the next group's weights, in flight while this one's are used
            gn = g + NW + warp
            okn = gn < g1
            wpn = blk_words + gn.to(gl.int64) * (STEPS * 32 * R) + lane * R + tile
            n0 = _load_step(wpn + 0 * 32 * R, okn)
            n1 = _load_step(wpn + 1 * 32 * R, okn)
            n2 = _load_step(wpn + 2 * 32 * R, okn)
            n3 = _load_step(wpn + 3 * 32 * R, okn)
            n4 = _load_step(wpn + 4 * 32 * R, okn)
            n5 = _load_step(wpn + 5 * 32 * R, okn)
            n6 = _load_step(wpn + 6 * 32 * R, okn)
            n7 = _load_step(wpn + 7 * 32 * R, okn)
        else:
            wp = blk_words + gw.to(gl.int64) * (STEPS * 32 * R) + lane * R + tile
            w0 = _load_step(wp + 0 * 32 * R, ok)
            w1 = _load_step(wp + 1 * 32 * R, ok)
            w2 = _load_step(wp + 2 * 32 * R, ok)
            w3 = _load_step(wp + 3 * 32 * R, ok)
            w4 = _load_step(wp + 4 * 32 * R, ok)
            w5 = _load_step(wp + 5 * 32 * R, ok)
            w6 = _load_step(wp + 6 * 32 * R, ok)
            w7 = _load_step(wp + 7 * 32 * R, ok)
        sp = blk_scales + gw.to(gl.int64) * (16 * R) + gq * R + tile
        sa = gl.load(sp, mask=ok, other=0.0)
        sb = gl.load(sp + 8 * R, mask=ok, other=0.0)
        xp = xw + gw * (GROUP // 2) + 16 * t
        c0 = zero_f
        c1 = zero_f
        c2 = zero_f
        c3 = zero_f
        s0 = zero_x
        s1 = zero_x
        s2 = zero_x
        s3 = zero_x
        for s in gl.static_range(STEPS):
            xa = gl.load(xp + 2 * s, mask=ok, other=0)
            xb = gl.load(xp + 2 * s + 1, mask=ok, other=0)
            if s == 0:
                w = w0
            elif s == 1:
                w = w1
            elif s == 2:
                w = w2
            elif s == 3:
                w = w3
            elif s == 4:
                w = w4
            elif s == 5:
                w = w5
            elif s == 6:
                w = w6
            else:
                w = w7
            c0, c1, c2, c3 = gl.inline_asm_elementwise(
                _MMA_WORD, "=f,=f,=f,=f,r,r,r,f,f,f,f",
                [w, xa + zero_i, xb + zero_i, c0, c1, c2, c3],
                dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)
            s0, s1, s2, s3 = gl.inline_asm_elementwise(
                _MMA_ONES, "=f,=f,=f,=f,r,r,f,f,f,f", [xa, xb, s0, s1, s2, s3],
                dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)
        off = 136.0 * s0
        acc_a += sa * (c0 - off)
        acc_b += sb * (c2 - off)
        if EARLY:
            w0 = n0
            w1 = n1
            w2 = n2
            w3 = n3
            w4 = n4
            w5 = n5
            w6 = n6
            w7 = n7
    tot_a = gl.sum(acc_a, axis=0)
    tot_b = gl.sum(acc_b, axis=0)
    lane2 = gl.arange(0, 32, layout=gl.SliceLayout(1, gl.SliceLayout(0, L)))[:, None]
    tile2 = gl.arange(0, R, layout=gl.SliceLayout(0, gl.SliceLayout(0, L)))[None, :]
    rows = blk * (16 * R) + 16 * tile2 + lane2 // 4
    first = (lane2 % 4) == 0
    gl.atomic_add(y_ptr + rows, tot_a, mask=first & (tile2 < R), sem="relaxed")
    gl.atomic_add(y_ptr + rows + 8, tot_b, mask=first & (tile2 < R), sem="relaxed")


class MmaInt4:
    """One GEMV's weights in the kernel's order, and its launch."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, r: int):
        self.n, self.k = q.shape[0], q.shape[1] * 2
        self.r = r
        self.w, self.s = pack_mma_int4(q, scales, r)

    def launch(self, x: torch.Tensor, y: torch.Tensor, warps: int, per_sm: int, early: int,
               pdl: bool, sms: int) -> None:
        blocks = self.n // (16 * self.r)
        groups = self.k // G
        # each warp takes `each` groups, as few as let the grid fit per_sm programs an SM
        each = -(-blocks * groups // (warps * per_sm * sms))
        split = max(1, groups // (warps * each))
        _mma_int4_kernel[(blocks, split)](
            self.w, self.s, x, y, self.k, R=self.r, EARLY=early, PDL=pdl, num_warps=warps,
            **({"launch_pdl": True} if pdl else {}))


def random_int4(n: int, k: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen, device=device)
    s = torch.rand(n, k // G, generator=gen, device=device) * 0.02 + 0.001
    return q, s


def reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    from kiln.kernels.quant_ref import int4_wo_linear_ref
    return int4_wo_linear_ref(x.float()[None], q, s, G).reshape(-1)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).norm() / ref.norm()).item()


def compile_only() -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    import compile_sm90
    ptrs = {"w_ptr": "*i32", "s_ptr": "*fp32", "x_ptr": "*bf16", "y_ptr": "*fp32"}
    for r, warps, _, early in VARIANTS:
        kern = compile_sm90.compile_one(
            _mma_int4_kernel, {"R": r, "EARLY": early, "PDL": True, "_ptrs": ptrs}, "bf16", warps, 1)
        sass_dir = os.environ.get("SASS_DIR")
        out = os.path.join(sass_dir, f"mma_int4_r{r}_w{warps}_e{early}.sass") if sass_dir else None
        print((r, warps, early), compile_sm90.resources(kern, out), flush=True)


def time_graph(fn, reps: int) -> float:
    """Median ms of a CUDA-graph replay of fn (captured after one eager call)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


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
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator(device=dev).manual_seed(0)
    variants = VARIANTS
    if args.variants:
        import ast
        variants = [tuple(v) for v in ast.literal_eval(args.variants)]
    bad = 0
    for name, n, k in CHECK_SHAPES:  # always: a wrong kernel is not timed
        q, s = random_int4(n, k, gen, dev)
        x = torch.randn(k, generator=gen, device=dev).to(torch.bfloat16)
        ref = reference(x, q, s)
        for r, warps, per_sm, early in CHECK_VARIANTS if args.check_only else variants:
            if n % (16 * r):
                continue
            m = MmaInt4(q, s, r)
            for pdl in ((False, True) if args.check_only else (True,)):
                for per in ((1, per_sm, 64) if args.check_only else (per_sm,)):
                    y = torch.zeros(n, device=dev)
                    m.launch(x, y, warps, per, early, pdl, sms)
                    err = rel_err(y, ref)
                    bad += not err < 1e-4
                    print(f"check {name} {n}x{k} {(r, warps, per, early)} pdl {pdl}: rel err "
                          f"{err:.2e} {'ok' if err < 1e-4 else 'WRONG'}", flush=True)
    print("all correct" if not bad else f"{bad} wrong", flush=True)
    if args.check_only or bad:
        return 1 if bad else 0

    sys.path.insert(0, os.path.dirname(__file__))
    import bench_quant
    import triton
    from kiln.kernels import pdl_scope
    from kiln.kernels.int4_bits import tile_int4_rows
    from kiln.kernels.quant_matmul import int4_wo_linear
    t0 = time.time()
    ceil = bench_quant.ceilings()
    copy = ceil["copy_GBps"]
    shapes = LAYER * args.layers + [LM_HEAD]
    gb = sum(n * k // 2 + 4 * n * k // G for _, n, k in shapes) / 1e9
    print(f"copy {copy:.0f} GB/s; {len(shapes)} GEMVs, {gb:.2f} GB (int4 + scales): "
          f"{gb / copy * 1e3:.3f} ms at copy", flush=True)
    results = []

    def rec(mode, variant, ms, err):
        results.append({"mode": mode, "variant": variant, "ms": ms, "weight_GB": gb,
                        "of_copy": gb / ms * 1e3 / copy, "rel_err_lm_head": err})
        print(f"{mode:<8} {str(variant):<16} {ms:7.3f} ms ({gb / ms * 1e3 / copy:6.1%} of copy) "
              f"err {err:.1e}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ceilings": ceil, "layers": args.layers, "results": results,
                           "seconds": time.time() - t0, "device": torch.cuda.get_device_name(),
                           "torch": torch.__version__, "triton": triton.__version__}, f, indent=1)

    # one set of random weights a distinct shape, shared by the layers (the bytes streamed are
    # the same; L2 holds none of them across 32 layers)
    base = {}
    for name, n, k in dict.fromkeys(shapes):
        base[(n, k)] = random_int4(n, k, gen, dev)
    x = {k: torch.randn(k, generator=gen, device=dev).to(torch.bfloat16) for _, _, k in shapes}
    lm_ref = reference(x[LM_HEAD[2]], *base[LM_HEAD[1:]])
    # the engine's version (kiln.kernels.mma_int4: bf16 out, split-K finished by the last program)
    from kiln.kernels.mma_int4 import int4_mma_gemv, pack_int4_mma
    packs = [pack_int4_mma(*base[(n, k)]) for _, n, k in shapes]
    outs = [None] * len(shapes)

    def run_kiln():
        for i, (_, n, k) in enumerate(shapes):
            outs[i] = int4_mma_gemv(x[k][None], *packs[i], None, n, k)
    with pdl_scope(True):
        ms = time_graph(run_kiln, args.reps)
    rec("kiln", "mma_int4 R4 w4", ms, rel_err(outs[-1].reshape(-1), lm_ref))
    packs = outs = None
    torch.cuda.empty_cache()
    for r in sorted({v[0] for v in variants}):
        mats = [MmaInt4(*base[(n, k)], r) for _, n, k in shapes]
        y = torch.zeros(sum(n for _, n, _ in shapes), device=dev)
        offs = [0]
        for _, n, _ in shapes:
            offs.append(offs[-1] + n)
        for v in (v for v in variants if v[0] == r):
            _, warps, per_sm, early = v

            def run_mma():
                y.zero_()
                for i, (_, n, k) in enumerate(shapes):
                    mats[i].launch(x[k], y[offs[i]:offs[i + 1]], warps, per_sm, early, True, sms)
            ms = time_graph(run_mma, args.reps)
            rec("mma", v, ms, rel_err(y[offs[-2]:], lm_ref))
        mats = None
        torch.cuda.empty_cache()
    # last (its autotuning takes a while)
    # the engine: each layer its own copy (blocks of 16 rows), bf16 out
    eng = [(tile_int4_rows(base[(n, k)][0].clone(), 16, G), base[(n, k)][1].clone())
           for _, n, k in shapes]
    outs = [None] * len(shapes)

    def run_engine():
        for i, (_, n, k) in enumerate(shapes):
            outs[i] = int4_wo_linear(x[k][None], eng[i][0], eng[i][1], G, row_block=16)
    with pdl_scope(True):
        ms = time_graph(run_engine, args.reps)
    rec("engine", "rb16", ms, rel_err(outs[-1].reshape(-1), lm_ref))
    eng = outs = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
