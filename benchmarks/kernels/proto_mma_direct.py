"""Prototype: batch-1 fp8 (W8A8) and bf16 GEMVs on the tensor cores straight from registers
(Gluon, mma.sync in inline PTX), against the engine's tensor-core GEMV, over the 8B's 129 GEMVs.

The int4 sibling (proto_mma_int4.py) explains the idea: the weights are stored once in the order
of mma.sync's A fragments (16-row tiles), so that each lane's 16-byte load is its whole fragment
for one mma (fp8: m16n8k32, 4 words of 4 codes; bf16: m16n8k16, 4 words of 2 values), with no
shared memory and no conversion. x is the B operand, the same in all 8 columns; the k order in a
chunk of 8 mma steps is permuted (the same on both sides) so that each lane reads its x as one run
of 16 words a chunk. fp8: x is the per-token fp8 codes with their scale (as the engine's W8A8
layers quantize it), and the float32 sums are scaled by the weight row's scale and x's at the end.

A program owns 16 R rows and a range of the chunks (grid: row blocks x K splits); its warps take
consecutive chunks; float32 atomics into a zero-filled output. Modes (medians of CUDA-graph
replays): engine (mma_gemv.tc_gemv on row-major weights, autotuned, PDL; fp8 after
quant_per_token as the engine's layers) and mma (variants R, warps, programs an SM, early).

    PYTHONPATH=. python benchmarks/kernels/proto_mma_direct.py --kind fp8 [--layers 32] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_mma_direct.py --check-only     # GPU, small, both
    PYTHONPATH=. python benchmarks/kernels/proto_mma_direct.py --compile-only   # sm_90, no GPU
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

from kiln.kernels.mma_int4 import _step
from kiln.kernels.pdl import pdl_start_gluon

sys.path.insert(0, os.path.dirname(__file__))
from proto_mma_int4 import rel_err  # noqa: E402
from proto_persistent_chain import LAYER, LM_HEAD, time_graph  # noqa: E402

# D = A B + C, pack 4: $0..$3 D, $4..$7 the A words, $8 $9 the B words ($10 $11 unused), $12..$15 C
_MMA_FP8 = gl.constexpr("""
mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32
  {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$12, $13, $14, $15};
""")
_MMA_BF16 = gl.constexpr("""
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
  {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$12, $13, $14, $15};
""")
STEPS = gl.constexpr(8)  # mma steps a chunk

# (R tiles of 16 rows a warp, warps, programs an SM (sets the K split), early loads)
VARIANTS = [(1, 4, 8, 1), (2, 4, 4, 1), (2, 4, 8, 1), (2, 8, 4, 1), (4, 4, 4, 1), (4, 4, 4, 0)]
CHECK_VARIANTS = [(4, 4, 4, 0), (2, 8, 4, 1), (1, 4, 8, 1)]
CHECK_SHAPES = [("a", 512, 256), ("b", 768, 1024), ("c", 256, 768), ("d", 128, 4096)]


def per_word(kind: str) -> int:
    return 4 if kind == "fp8" else 2


def chunk_k(kind: str) -> int:
    return 64 * per_word(kind)  # 8 steps of 8 E k: 256 (fp8) or 128 (bf16)


def pack_mma(w: torch.Tensor, kind: str, r: int) -> torch.Tensor:
    """Weights [N, K] (fp8 codes or bf16) -> int32 words [N / 16r, K / chunk, 8, 32, r, 4] in
    _mma_direct_kernel's order. Word reg of (block, chunk c, step s, lane 4 g + t, tile j), with
    rows a = 16 j + g, b = a + 8 and k0 = chunk c + 16 E t + 2 E s (E values a word): reg 0 row a
    at k0 .. k0 + E, 1 row b there, 2 row a at k0 + E .. k0 + 2E, 3 row b there."""
    e = per_word(kind)
    n, k = w.shape
    ck = chunk_k(kind)
    if n % (16 * r) or k % ck:
        raise ValueError(f"N {n} must be a multiple of {16 * r} and K {k} of {ck}")
    raw = w.view(torch.uint8 if kind == "fp8" else torch.int16)
    # rows (block, j, h, g); k (chunk, t, s, half, e)
    v = raw.reshape(n // (16 * r), r, 2, 8, k // ck, 4, 8, 2, e)
    # -> (block, chunk, s, g, t, j, half, h, e): reg = 2 half + h
    v = v.permute(0, 4, 6, 3, 5, 1, 7, 2, 8).contiguous()
    return v.view(torch.int32).reshape(n // (16 * r), k // ck, 8, 32, r, 4)


@gluon.jit
def _chunk_words(wp, ok, STEP_WORDS: gl.constexpr):
    """A chunk's 8 steps of words (zeros where not ok)."""
    return (gl.load(wp + 0 * STEP_WORDS, mask=ok, other=0), gl.load(wp + 1 * STEP_WORDS, mask=ok, other=0),
            gl.load(wp + 2 * STEP_WORDS, mask=ok, other=0), gl.load(wp + 3 * STEP_WORDS, mask=ok, other=0),
            gl.load(wp + 4 * STEP_WORDS, mask=ok, other=0), gl.load(wp + 5 * STEP_WORDS, mask=ok, other=0),
            gl.load(wp + 6 * STEP_WORDS, mask=ok, other=0), gl.load(wp + 7 * STEP_WORDS, mask=ok, other=0))


@gluon.jit
def _mma_direct_kernel(w_ptr, ws_ptr, x_ptr, xs_ptr, y_ptr, K, R: gl.constexpr, FP8: gl.constexpr,
                       EARLY: gl.constexpr, PDL: gl.constexpr):
    # y[16 R rows of block pid 0] += W x over chunks [c0, c1) of split pid 1 (x: fp8 codes [K] with
    # the scale xs_ptr[0], or bf16 [K], read as int32 words; fp8: times ws_ptr[row] too).
    NW: gl.constexpr = gl.num_warps()
    CK: gl.constexpr = 256 if FP8 else 128  # k a chunk (8 steps; 256 bytes of a row either way)
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
    STEP_WORDS: gl.constexpr = 32 * R * 4
    CHUNK_WORDS: gl.constexpr = 8 * STEP_WORDS
    blk_words = w_ptr + blk.to(gl.int64) * chunks * CHUNK_WORDS
    in_step = lane * (R * 4) + tile * 4 + reg  # [1, 32, R, 4]
    xw = x_ptr.to(gl.pointer_type(gl.int32))
    x_in = 16 * t + (reg % 2)  # words (x_a, x_b, x_a, x_b)
    acc = gl.zeros([NW, 32, R, 4], gl.float32, L)
    cw = c0 + warp
    if EARLY:  # the first chunk's weights before waiting for the kernel before
        wp = blk_words + cw.to(gl.int64) * CHUNK_WORDS + in_step
        ok = cw < c1
        w0, w1, w2, w3, w4, w5, w6, w7 = _chunk_words(wp, ok, STEP_WORDS)
    pdl_start_gluon(PDL)
    for c in range(c0, c1, NW):
        cw = c + warp
        ok = cw < c1
        if not EARLY:
            wp = blk_words + cw.to(gl.int64) * CHUNK_WORDS + in_step
            w0, w1, w2, w3, w4, w5, w6, w7 = _chunk_words(wp, ok, STEP_WORDS)
        xp = xw + cw * 64 + x_in
        for s in gl.static_range(STEPS):
            xab = gl.load(xp + 2 * s, mask=ok, other=0)  # [NW, 32, 1, 4]
            w = _step(s, w0, w1, w2, w3, w4, w5, w6, w7)
            if FP8:
                acc = gl.inline_asm_elementwise(_MMA_FP8, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f",
                                                [w, xab + w * 0, acc], dtype=gl.float32,
                                                is_pure=True, pack=4)
            else:
                acc = gl.inline_asm_elementwise(_MMA_BF16, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f",
                                                [w, xab + w * 0, acc], dtype=gl.float32,
                                                is_pure=True, pack=4)
        if EARLY:  # the next chunk's weights
            cn = c + NW + warp
            wp = blk_words + cn.to(gl.int64) * CHUNK_WORDS + in_step
            okn = cn < c1
            w0, w1, w2, w3, w4, w5, w6, w7 = _chunk_words(wp, okn, STEP_WORDS)
    tot = gl.sum(acc, axis=0)  # [32, R, 4]: element reg 0 row a, reg 2 row b (col 2t)
    T2: gl.constexpr = gl.SliceLayout(0, L)
    lane2 = gl.arange(0, 32, layout=gl.SliceLayout(1, gl.SliceLayout(2, T2)))[:, None, None]
    tile2 = gl.arange(0, R, layout=gl.SliceLayout(0, gl.SliceLayout(2, T2)))[None, :, None]
    reg2 = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, T2)))[None, None, :]
    rows = blk * (16 * R) + 16 * tile2 + lane2 // 4 + 8 * (reg2 // 2)
    keep = ((lane2 % 4) == 0) & ((reg2 % 2) == 0)
    if FP8:
        tot = tot * gl.load(ws_ptr + rows, mask=keep, other=0.0) * gl.load(xs_ptr)
    gl.atomic_add(y_ptr + rows, tot, mask=keep, sem="relaxed")


class MmaDirect:
    """One GEMV's weights in the kernel's order (and fp8 row scales), and its launch."""

    def __init__(self, w: torch.Tensor, ws: torch.Tensor | None, kind: str, r: int):
        self.n, self.k = w.shape
        self.kind, self.r = kind, r
        self.w = pack_mma(w, kind, r)
        self.ws = ws if ws is not None else torch.ones(1, device=w.device)

    def launch(self, x: torch.Tensor, xs: torch.Tensor, y: torch.Tensor, warps: int, per_sm: int,
               early: int, pdl: bool, sms: int) -> None:
        blocks = self.n // (16 * self.r)
        chunks = self.k // chunk_k(self.kind)
        each = -(-blocks * chunks // (warps * per_sm * sms))
        split = max(1, chunks // (warps * each))
        _mma_direct_kernel[(blocks, split)](
            self.w, self.ws, x, xs, y, self.k, R=self.r, FP8=self.kind == "fp8", EARLY=early,
            PDL=pdl, num_warps=warps, **({"launch_pdl": True} if pdl else {}))


def random_weights(kind: str, n: int, k: int, gen, dev):
    w = torch.randn(n, k, generator=gen, device=dev) * 0.02
    if kind == "fp8":
        ws = w.abs().amax(dim=1).clamp(min=1e-8) / 448.0
        return (w / ws[:, None]).to(torch.float8_e4m3fn), ws.float()
    return w.to(torch.bfloat16), None


def random_x(kind: str, k: int, gen, dev):
    x = torch.randn(k, generator=gen, device=dev)
    if kind == "fp8":
        xs = x.abs().amax().clamp(min=1e-8) / 448.0
        return (x / xs).to(torch.float8_e4m3fn), xs.reshape(1).float()
    return x.to(torch.bfloat16), torch.ones(1, device=dev)


def reference(kind: str, w, ws, x, xs) -> torch.Tensor:
    y = w.float() @ x.float()
    return y * ws * xs if kind == "fp8" else y


def compile_only() -> None:
    import compile_sm90
    ptrs = {"w_ptr": "*i32", "ws_ptr": "*fp32", "xs_ptr": "*fp32", "y_ptr": "*fp32"}
    for kind in ("fp8", "bf16"):
        for r, warps, _, early in VARIANTS + CHECK_VARIANTS[:1]:
            kern = compile_sm90.compile_one(
                _mma_direct_kernel, {"R": r, "FP8": kind == "fp8", "EARLY": early, "PDL": True,
                                     "_ptrs": {**ptrs, "x_ptr": "*fp8e4nv" if kind == "fp8" else "*bf16"}},
                "bf16", warps, 1)
            sass_dir = os.environ.get("SASS_DIR")
            out = (os.path.join(sass_dir, f"mma_{kind}_r{r}_w{warps}_e{early}.sass") if sass_dir
                   else None)
            print(kind, (r, warps, early), compile_sm90.resources(kern, out), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("fp8", "bf16"), default="fp8")
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
    for kind in (("fp8", "bf16") if args.check_only else (args.kind,)):
        tol = 1e-4
        for name, n, k in CHECK_SHAPES:
            if k % chunk_k(kind):
                continue
            w, ws = random_weights(kind, n, k, gen, dev)
            x, xs = random_x(kind, k, gen, dev)
            ref = reference(kind, w, ws, x, xs)
            for r, warps, per_sm, early in CHECK_VARIANTS if args.check_only else variants:
                if n % (16 * r):
                    continue
                m = MmaDirect(w, ws, kind, r)
                for pdl in ((False, True) if args.check_only else (True,)):
                    for per in ((1, per_sm, 64) if args.check_only else (per_sm,)):
                        y = torch.zeros(n, device=dev)
                        m.launch(x, xs, y, warps, per, early, pdl, sms)
                        err = rel_err(y, ref)
                        bad += not err < tol
                        print(f"check {kind} {name} {n}x{k} {(r, warps, per, early)} pdl {pdl}: "
                              f"rel err {err:.2e} {'ok' if err < tol else 'WRONG'}", flush=True)
    print("all correct" if not bad else f"{bad} wrong", flush=True)
    if args.check_only or bad:
        return 1 if bad else 0

    import bench_quant
    import triton
    from kiln.kernels import pdl_scope
    from kiln.kernels.mma_gemv import tc_gemv
    from kiln.kernels.quant_act import quant_per_token
    kind = args.kind
    t0 = time.time()
    ceil = bench_quant.ceilings()
    copy = ceil["copy_GBps"]
    shapes = LAYER * args.layers + [LM_HEAD]
    elem = 1 if kind == "fp8" else 2
    gb = sum(n * k * elem + (4 * n if kind == "fp8" else 0) for _, n, k in shapes) / 1e9
    print(f"copy {copy:.0f} GB/s; {len(shapes)} {kind} GEMVs, {gb:.2f} GB: "
          f"{gb / copy * 1e3:.3f} ms at copy", flush=True)
    results = []

    def rec(mode, variant, ms, err):
        results.append({"mode": mode, "variant": variant, "ms": ms, "weight_GB": gb,
                        "of_copy": gb / ms * 1e3 / copy, "rel_err_lm_head": err})
        print(f"{mode:<8} {str(variant):<16} {ms:7.3f} ms ({gb / ms * 1e3 / copy:6.1%} of copy) "
              f"err {err:.1e}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"kind": kind, "ceilings": ceil, "layers": args.layers, "results": results,
                           "seconds": time.time() - t0, "device": torch.cuda.get_device_name(),
                           "torch": torch.__version__, "triton": triton.__version__}, f, indent=1)

    # every layer its own weights (no L2 reuse across the 32 layers)
    weights = [random_weights(kind, n, k, gen, dev) for _, n, k in shapes]
    xb = {k: torch.randn(k, generator=gen, device=dev).to(torch.bfloat16) for _, _, k in shapes}
    xq = {}
    for k, v in xb.items():
        q, s = quant_per_token(v[None], torch.float8_e4m3fn)
        xq[k] = (q.reshape(-1), s.reshape(1).float())
    lm = LM_HEAD[2]
    if kind == "fp8":
        lm_ref = reference(kind, weights[-1][0], weights[-1][1], *xq[lm])
    else:
        lm_ref = reference(kind, weights[-1][0], None, xb[lm], None)
    outs = [None] * len(shapes)

    def run_engine():
        for i, (_, n, k) in enumerate(shapes):
            w, ws = weights[i]
            if kind == "fp8":
                q, s = quant_per_token(xb[k][None], torch.float8_e4m3fn)
                outs[i] = tc_gemv(q, s, w, ws, None, torch.bfloat16)
            else:
                outs[i] = tc_gemv(xb[k][None], None, w, None, None, torch.bfloat16)
    with pdl_scope(True):
        ms = time_graph(run_engine, args.reps)
    rec("engine", "tc_gemv", ms, rel_err(outs[-1].reshape(-1), lm_ref))
    outs = None
    for r in sorted({v[0] for v in variants}):
        mats = [MmaDirect(w, ws, kind, r) for w, ws in weights]
        y = torch.zeros(sum(n for _, n, _ in shapes), device=dev)
        offs = [0]
        for _, n, _ in shapes:
            offs.append(offs[-1] + n)
        for v in (v for v in variants if v[0] == r):
            _, warps, per_sm, early = v

            def run_mma():
                y.zero_()
                for i, (_, n, k) in enumerate(shapes):
                    x, xs = xq[k] if kind == "fp8" else (xb[k], xq[k][1])
                    mats[i].launch(x, xs, y[offs[i]:offs[i + 1]], warps, per_sm, early, True, sms)
            ms = time_graph(run_mma, args.reps)
            rec("mma", v, ms, rel_err(y[offs[-2]:], lm_ref))
        mats = None
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
