"""The batch-1 int4 ring GEMV with tensor-core products (kiln.kernels.ring_int4) against the
engine's int4 GEMV (blocks of 16 rows), over the 8B's 129 int4 GEMVs (32 layers and an int4 LM
head), in CUDA graphs under PDL, every layer its own weights.

First a check of the kernel on the 8B's shapes and small ones against the int4 reference (a
wrong kernel is not timed); then the chain, alternating the two kernels `--rounds` times, with
the weight bytes against the card's copy rate; then, with --per-shape, each shape alone (a
graph of 20 launches of one layer's weights).

    PYTHONPATH=. python benchmarks/kernels/bench_ring_int4.py [--layers 32] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))  # proto_persistent_chain, bench_quant
from proto_mma_int4 import random_int4 as random_rows  # noqa: E402
from proto_persistent_chain import LAYER, LM_HEAD, time_graph  # noqa: E402

G = 128
CHECK = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096), (2048, 2048),
         (48, 3072), (400, 6144)]


def random_int4(n: int, k: int, gen: torch.Generator):
    """proto_mma_int4's random weights, row-major and in the engine's blocks of 16 rows."""
    from kiln.kernels.int4_bits import tile_int4_rows
    q, s = random_rows(n, k, gen, "cuda")
    return q, tile_int4_rows(q, 16, G), s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-shape", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    import triton

    import bench_quant
    from kiln.kernels import pdl_scope
    from kiln.kernels.quant_matmul import int4_wo_linear
    from kiln.kernels.quant_ref import int4_wo_linear_ref
    from kiln.kernels.ring_int4 import ring_int4_config, ring_int4_gemv

    os.environ["KILN_RING_INT4"] = "0"  # int4_wo_linear: the engine's kernel; the ring is called directly
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "check": [], "chain": [], "per_shape": []}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)

    bad = 0
    for n, k in CHECK:
        q, tiled, s = random_int4(n, k, gen)
        x = torch.randn(1, k, generator=gen, device="cuda").to(torch.bfloat16)
        ref = int4_wo_linear_ref(x, q, s, G).float()
        for pdl in (False, True):
            with pdl_scope(pdl):
                y = ring_int4_gemv(x, tiled, s).float()
            err = ((y - ref).norm() / ref.norm()).item()
            ok = err < 4e-3
            bad += not ok
            out["check"].append({"n": n, "k": k, "pdl": pdl, "rel_err": err,
                                 "config": ring_int4_config(n, k)})
            print(f"check {n}x{k} pdl {pdl} config {ring_int4_config(n, k)}: rel err {err:.2e} "
                  f"{'ok' if ok else 'WRONG'}", flush=True)
    save()
    if bad:
        print(f"{bad} wrong: not timed")
        return 1

    ceil = bench_quant.ceilings()
    copy = ceil["copy_GBps"]
    out["ceilings"] = ceil
    shapes = LAYER * args.layers + [LM_HEAD]
    gb = sum(n * k // 2 + 4 * n * k // G for _, n, k in shapes) / 1e9
    print(f"copy {copy:.0f} GB/s; {len(shapes)} GEMVs, {gb:.2f} GB (int4 + scales): "
          f"{gb / copy * 1e3:.3f} ms at copy", flush=True)
    base = {(n, k): random_int4(n, k, gen) for _, n, k in dict.fromkeys(shapes)}
    weights = [(base[(n, k)][1].clone(), base[(n, k)][2].clone()) for _, n, k in shapes]
    x = {k: torch.randn(1, k, generator=gen, device="cuda").to(torch.bfloat16) for _, _, k in shapes}
    ys = [None] * len(shapes)

    def run_ring():
        for i, (_, n, k) in enumerate(shapes):
            ys[i] = ring_int4_gemv(x[k], *weights[i])

    def run_engine():
        for i, (_, n, k) in enumerate(shapes):
            ys[i] = int4_wo_linear(x[k], weights[i][0], weights[i][1], G, row_block=16)

    t0 = time.time()
    for r in range(args.rounds):
        for mode, fn in (("engine", run_engine), ("ring", run_ring)):
            with pdl_scope(True):
                ms = time_graph(fn, args.reps)
            out["chain"].append({"mode": mode, "round": r, "ms": ms, "weight_GB": gb,
                                 "of_copy": gb / ms * 1e3 / copy})
            print(f"round {r} {mode:<7} {ms:7.3f} ms ({gb / ms * 1e3 / copy:6.1%} of copy)", flush=True)
            save()
    out["chain_seconds"] = time.time() - t0
    if args.per_shape:
        for name, n, k in LAYER + [LM_HEAD]:
            w = [(base[(n, k)][1].clone(), base[(n, k)][2].clone()) for _ in range(20)]
            one = n * k // 2 + 4 * n * k // G
            for mode in ("engine", "ring"):
                def run():
                    for i in range(20):
                        if mode == "ring":
                            ring_int4_gemv(x[k], *w[i])
                        else:
                            int4_wo_linear(x[k], w[i][0], w[i][1], G, row_block=16)
                with pdl_scope(True):
                    ms = time_graph(run, args.reps) / 20
                out["per_shape"].append({"shape": name, "n": n, "k": k, "mode": mode, "us": ms * 1e3,
                                         "of_copy": one / ms / 1e6 / copy})
                print(f"{name:<8} {mode:<7} {ms * 1e3:7.2f} us ({one / ms / 1e6 / copy:6.1%} of copy)",
                      flush=True)
                save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
