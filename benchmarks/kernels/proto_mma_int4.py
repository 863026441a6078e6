"""The batch-1 int4 weight-only GEMV on the tensor cores straight from registers
(kiln.kernels.mma_int4, KILN_INT4_MMA) against the engine's int4 GEMV, over the 8B's 129 GEMVs.

Why: the engine's int4 FMA GEMV streams the 8B's int4 GEMVs at about 51% of the copy rate, and
the shared-memory ring of copies (proto_ring_int4.py) tied it: with its loads always in flight
it was no faster, so the int4 GEMV is bound by its instructions (about 2-4 a weight: nibbles to
float16 pairs, packed FMAs, float32 sums, scales), not by load latency. kiln.kernels.mma_int4
does a weight in about one instruction (its docstring says how).

Modes (medians of CUDA-graph replays under PDL, every layer its own weights): mma, the kernel
at launch variants (R tiles of 16 rows a warp, warps, programs an SM (sets the K split), early
weight loads), after a check of each variant on small shapes; engine (quant_matmul.int4_wo_linear,
blocks of 16 rows, the engine's default, autotuned), last because its autotuning is slow.

    PYTHONPATH=. python benchmarks/kernels/proto_mma_int4.py [--layers 32] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_mma_int4.py --check-only     # GPU, small
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from kiln.kernels.mma_int4 import int4_mma_gemv, pack_int4_mma

sys.path.insert(0, os.path.dirname(__file__))  # proto_persistent_chain, bench_quant
from proto_persistent_chain import LAYER, LM_HEAD, time_graph  # noqa: E402

G = 128  # k a group
# (R, warps, programs an SM, early)
VARIANTS = [(4, 4, 4, 1), (4, 4, 4, 0), (2, 4, 8, 1), (8, 4, 2, 1), (4, 8, 2, 1)]
CHECK_VARIANTS = [(4, 4, 4, 0), (2, 8, 4, 1), (4, 4, 8, 1), (8, 4, 2, 1)]
CHECK_SHAPES = [("a", 512, 256), ("b", 768, 1024), ("c", 256, 768), ("d", 128, 4096)]


def random_int4(n: int, k: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen, device=device)
    s = torch.rand(n, k // G, generator=gen, device=device) * 0.02 + 0.001
    return q, s


def reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    from kiln.kernels.quant_ref import int4_wo_linear_ref
    return int4_wo_linear_ref(x.float()[None], q, s, G).reshape(-1)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).norm() / ref.norm()).item()


def launch(x: torch.Tensor, packed: tuple, n: int, k: int, variant: tuple) -> torch.Tensor:
    """One GEMV of bf16 x [K] through the kernel at a variant (packed for its R)."""
    _, warps, per_sm, early = variant
    return int4_mma_gemv(x[None], *packed, None, n, k, warps=warps, per_sm=per_sm,
                         early=bool(early)).reshape(-1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    for name, n, k in CHECK_SHAPES:  # always: a wrong variant is not timed
        q, s = random_int4(n, k, gen, dev)
        x = torch.randn(k, generator=gen, device=dev).to(torch.bfloat16)
        ref = reference(x, q, s)
        for v in CHECK_VARIANTS if args.check_only else variants:
            if n % (16 * v[0]):
                continue
            packed = pack_int4_mma(q, s, v[0])
            for pdl in ((False, True) if args.check_only else (True,)):
                pers = (1, v[2], 64) if args.check_only else (v[2],)
                for per in pers:
                    with pdl_scope(pdl):
                        y = launch(x, packed, n, k, (v[0], v[1], per, v[3]))
                    err = rel_err(y, ref)  # bf16 output: within its rounding
                    bad += not err < 4e-3
                    print(f"check {name} {n}x{k} {(v[0], v[1], per, v[3])} pdl {pdl}: rel err "
                          f"{err:.2e} {'ok' if err < 4e-3 else 'WRONG'}", flush=True)
    print("all correct" if not bad else f"{bad} wrong", flush=True)
    if args.check_only or bad:
        return 1 if bad else 0

    import bench_quant
    import triton
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

    # one set of random weights a distinct shape, copied for every layer (L2 holds none of them
    # across 32 layers)
    base = {(n, k): random_int4(n, k, gen, dev) for _, n, k in dict.fromkeys(shapes)}
    x = {k: torch.randn(k, generator=gen, device=dev).to(torch.bfloat16) for _, _, k in shapes}
    lm_ref = reference(x[LM_HEAD[2]], *base[LM_HEAD[1:]])
    outs = [None] * len(shapes)
    for r in sorted({v[0] for v in variants}):
        packs = [pack_int4_mma(*base[(n, k)], r) for _, n, k in shapes]
        for v in (v for v in variants if v[0] == r):
            def run_mma():
                for i, (_, n, k) in enumerate(shapes):
                    outs[i] = launch(x[k], packs[i], n, k, v)
            with pdl_scope(True):
                ms = time_graph(run_mma, args.reps)
            rec("mma", v, ms, rel_err(outs[-1], lm_ref))
        packs = None
        torch.cuda.empty_cache()
    # the engine's int4 GEMV: each layer its own copy (blocks of 16 rows)
    eng = [(tile_int4_rows(base[(n, k)][0].clone(), 16, G), base[(n, k)][1].clone())
           for _, n, k in shapes]

    def run_engine():
        for i, (_, n, k) in enumerate(shapes):
            outs[i] = int4_wo_linear(x[k][None], eng[i][0], eng[i][1], G, row_block=16)
    with pdl_scope(True):
        ms = time_graph(run_engine, args.reps)
    rec("engine", "rb16", ms, rel_err(outs[-1].reshape(-1), lm_ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
