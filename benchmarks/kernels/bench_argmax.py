"""Greedy argmax over Llama-3 logits: torch's argmax against kiln's split kernel, per row count.

At batch 1 torch reduces the [1, 128256] row with one thread block (36.9 us per decode step
measured on the H200); kiln.kernels.argmax splits it over the SMs. For each row count this
times both as CUDA-graph replays (median, rotating input sets so one timing moves at least the
L2 cache's worth where the rows are that big) and with ordinary launches (the runner calls the
argmax eagerly after each graph replay, so the eager number includes Triton's Python launch
cost, which overlaps the GPU's work while the host runs ahead). Every kiln result is checked
against torch's in the same run. --sweep also times other launch settings of the kernel
(warps, programs aimed at per SM).

    PYTHONPATH=. python benchmarks/kernels/bench_argmax.py [--rows 1,8,64,256] [--dtype bf16]
        [--sweep] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench_kernels  # noqa: E402

from kiln.kernels import argmax as argmax_mod  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SWEEP = [(w, p) for w in (4, 8, 16) for p in (1, 2, 4, 8)]  # (num_warps, programs per SM)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,8,64,256", help="comma-separated row counts")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--sweep", action="store_true", help="also time other launch settings")
    ap.add_argument("--json", default=None, help="write the results here")
    return ap.parse_args(argv)


def bench_rows(m: int, vocab: int, dtype: torch.dtype, reps: int, sweep: bool) -> dict:
    """Times (us) of torch's and kiln's argmax over [m, vocab] logits, graph and eager."""
    sets = [torch.randn(m, vocab, device="cuda", dtype=dtype)
            for _ in range(bench_kernels.n_sets(m * vocab * dtype.itemsize))]
    for x in sets:
        got, ref = argmax_mod.argmax(x), argmax_mod.argmax_ref(x)
        assert torch.equal(got, ref), f"M={m}: kiln's argmax differs from torch's"
    torch_g, torch_e = bench_kernels.both([lambda x=x: argmax_mod.argmax_ref(x) for x in sets],
                                          reps)
    kiln_g, kiln_e = bench_kernels.both([lambda x=x: argmax_mod.argmax(x) for x in sets], reps)
    programs = argmax_mod.PROGRAMS_PER_SM * argmax_mod._num_sms(sets[0].device)
    splits, chunk = argmax_mod.split_for(m, vocab, programs, argmax_mod.block_for(dtype))
    row = {"m": m, "vocab": vocab, "splits": splits, "chunk": chunk,
           "torch_graph_us": round(torch_g, 2), "torch_eager_us": round(torch_e, 2),
           "kiln_graph_us": round(kiln_g, 2), "kiln_eager_us": round(kiln_e, 2),
           "speedup_graph": round(torch_g / kiln_g, 2)}
    if sweep:
        row["sweep"] = []
        for warps, per_sm in SWEEP:
            calls = [lambda x=x: argmax_mod.launch(x, warps, per_sm) for x in sets]
            assert all(torch.equal(c(), argmax_mod.argmax_ref(x)) for c, x in zip(calls, sets))
            row["sweep"].append({"num_warps": warps, "programs_per_sm": per_sm,
                                 "graph_us": round(bench_kernels.time_calls(calls, reps), 2)})
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_argmax needs a CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    props = torch.cuda.get_device_properties(0)
    rows = []
    for m in (int(r) for r in args.rows.split(",")):
        row = bench_rows(m, args.vocab, dtype, args.reps, args.sweep)
        rows.append(row)
        print(f"M={m:5d} V={args.vocab} {args.dtype}  torch {row['torch_graph_us']:7.2f} us "
              f"(eager {row['torch_eager_us']:6.2f})  kiln {row['kiln_graph_us']:6.2f} us "
              f"(eager {row['kiln_eager_us']:6.2f}, {row['splits']} splits of {row['chunk']})  "
              f"{row['speedup_graph']:5.2f}x", flush=True)
        for s in row.get("sweep", []):
            print(f"    warps {s['num_warps']:2d}  programs/SM {s['programs_per_sm']}  "
                  f"{s['graph_us']:6.2f} us", flush=True)
    if args.json:
        import triton
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "sms": props.multi_processor_count,
                       "torch": torch.__version__, "triton": triton.__version__,
                       "dtype": args.dtype, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
