"""Prototype: batch-1 fp8 (W8A8) and bf16 GEMVs on the tensor cores straight from registers
(Gluon, mma.sync in inline PTX), against the engine's tensor-core GEMV, over the 8B's 129 GEMVs.

The int4 sibling (proto_mma_int4.py) explains the idea: the weights are stored once in the order
of mma.sync's A fragments (16-row tiles), so that each lane's 16-byte load is its whole fragment
for one mma (fp8: m16n8k32, 4 words of 4 codes; bf16: m16n8k16, 4 words of 2 values), with no
shared memory and no conversion. x is the B operand (column c = row c of x); the k order in a
chunk of 8 mma steps is permuted (the same on both sides) so that each lane reads its x as one run
of 16 words a chunk. fp8: x is the per-token fp8 codes with their scale (as the engine's W8A8
layers quantize it), and the float32 sums are scaled by the weight row's scale and x's at the end.

The kernel is the engine's, kiln.kernels.mma_direct (KILN_MMA_DIRECT). Modes (medians of
CUDA-graph replays under PDL): engine (mma_gemv.tc_gemv on row-major weights, autotuned) and mma
(mma_direct_gemv at variants R, warps, programs an SM, early). fp8: both take the codes quantized
beforehand, as a layer whose producer quantizes its input gets them (the engine's default).

    PYTHONPATH=. python benchmarks/kernels/proto_mma_direct.py --kind fp8 [--layers 32] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_mma_direct.py --check-only     # GPU, small, both
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from kiln.kernels.mma_direct import chunk_k, mma_direct_gemv, pack_mma_direct

sys.path.insert(0, os.path.dirname(__file__))
from proto_mma_int4 import rel_err  # noqa: E402
from proto_persistent_chain import LAYER, LM_HEAD, time_graph  # noqa: E402

# (R tiles of 16 rows a warp, warps, programs an SM (sets the K split), early loads[, cvt: fp8
# through the written-out conversions and chained f16 mmas; fp8 only])
VARIANTS = [(1, 4, 8, 1), (2, 4, 4, 1), (2, 4, 8, 1), (2, 8, 4, 1), (4, 4, 4, 1), (4, 4, 4, 0),
            (2, 4, 4, 1, 1), (4, 4, 4, 1, 1)]
CHECK_VARIANTS = [(4, 4, 4, 0), (2, 8, 4, 1), (1, 4, 8, 1), (2, 4, 4, 1, 1), (4, 4, 4, 0, 1)]
CHECK_SHAPES = [("a", 512, 256), ("b", 768, 1024), ("c", 256, 768), ("d", 128, 4096)]
DTYPES = {"fp8": torch.float8_e4m3fn, "bf16": torch.bfloat16}


def _fields(v):
    """A variant tuple's (R, warps, per_sm, early, cvt); cvt is 0 when left out."""
    return (*v, 0) if len(v) == 4 else tuple(v)


class MmaDirect:
    """One GEMV's weights in the kernel's order (and fp8 row scales), and its launch."""

    def __init__(self, w: torch.Tensor, ws: torch.Tensor | None, r: int):
        self.n, self.k = w.shape
        self.w = pack_mma_direct(w, r)
        self.ws = ws

    def launch(self, x: torch.Tensor, xs: torch.Tensor | None, warps: int, per_sm: int,
               early: int, split: int = 0, cvt: int = 0) -> torch.Tensor:
        """x [K] (fp8 codes with scale xs [1], or bf16) -> y [N] bf16."""
        return mma_direct_gemv(x[None], xs if x.dtype == torch.float8_e4m3fn else None, self.w,
                               self.ws, None, self.n, self.k, torch.bfloat16, split=split,
                               warps=warps, per_sm=per_sm, early=bool(early),
                               cvt=bool(cvt)).reshape(-1)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("fp8", "bf16"), default="fp8")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants", help="a Python list of variant tuples instead of VARIANTS")
    ap.add_argument("--json")
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args()
    from kiln.kernels import pdl_scope
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    variants = VARIANTS
    if args.variants:
        import ast
        variants = [tuple(v) for v in ast.literal_eval(args.variants)]
    bad = 0
    for kind in (("fp8", "bf16") if args.check_only else (args.kind,)):
        tol = 4e-3  # bfloat16 output
        for name, n, k in CHECK_SHAPES:
            if k % chunk_k(DTYPES[kind]):
                continue
            w, ws = random_weights(kind, n, k, gen, dev)
            x, xs = random_x(kind, k, gen, dev)
            ref = reference(kind, w, ws, x, xs)
            for v in CHECK_VARIANTS if args.check_only else variants:
                r, warps, per_sm, early, cvt = _fields(v)
                if n % (16 * r) or (cvt and kind != "fp8"):
                    continue
                m = MmaDirect(w, ws, r)
                for pdl in ((False, True) if args.check_only else (True,)):
                    for split in ((0, 1, 3) if args.check_only else (0,)):
                        with pdl_scope(pdl):
                            y = m.launch(x, xs, warps, per_sm, early, split, cvt)
                        err = rel_err(y, ref)
                        bad += not err < tol
                        print(f"check {kind} {name} {n}x{k} {v} split "
                              f"{split} pdl {pdl}: rel err {err:.2e} {'ok' if err < tol else 'WRONG'}",
                              flush=True)
    print("all correct" if not bad else f"{bad} wrong", flush=True)
    if args.check_only or bad:
        return 1 if bad else 0

    import bench_quant
    import triton
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
                q, s = xq[k]
                outs[i] = tc_gemv(q[None], s.reshape(1, 1), w, ws, None, torch.bfloat16)
            else:
                outs[i] = tc_gemv(xb[k][None], None, w, None, None, torch.bfloat16)
    with pdl_scope(True):
        ms = time_graph(run_engine, args.reps)
    rec("engine", "tc_gemv", ms, rel_err(outs[-1].reshape(-1), lm_ref))
    outs = None
    for r in sorted({v[0] for v in variants}):
        mats = [MmaDirect(w, ws, r) for w, ws in weights]
        for v in (v for v in variants if v[0] == r and not (_fields(v)[4] and kind != "fp8")):
            _, warps, per_sm, early, cvt = _fields(v)
            outs = [None] * len(shapes)

            def run_mma():
                for i, (_, n, k) in enumerate(shapes):
                    x, xs = xq[k] if kind == "fp8" else (xb[k], None)
                    outs[i] = mats[i].launch(x, xs, warps, per_sm, early, cvt=cvt)
            with pdl_scope(True):
                ms = time_graph(run_mma, args.reps)
            rec("mma", v, ms, rel_err(outs[-1], lm_ref))
        mats = outs = None
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
