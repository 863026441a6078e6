"""Sweep launch settings of the paged-attention kernels at Llama-3-8B shapes (bf16, block 16).

Times each setting with CUDA-graph replays (see bench_kernels.py) and prints the best per shape;
the dispatcher's defaults in kiln/kernels/attention.py were chosen from this output.

    PYTHONPATH=. python benchmarks/kernels/sweep_attention.py --out sweep.json

``--decode-shapes "1000,1,192;1000,1,256" --kv bf16,fp8 --only decode`` sweeps the decode kernel
at other (batch, new tokens, context) shapes, over a wider grid with one partition per sequence
(partition 8192), with a bf16 and an fp8 e4m3 cache (the latter with and without the PTX
widening, ``fp8_asm``); ``--tiles`` narrows that grid. ``--graph-max-seq-len 8192`` times them as a
decode CUDA graph runs them (max_seq_len fixed to max_model_len, which sizes the grid), with the
dispatcher's partition count and those of ``--partitions``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from bench_kernels import HEAD_DIM, HK, HQ, BLOCK, n_sets, paged_setup, time_calls
from kiln.kernels import attention, decode_attention

SCALE = HEAD_DIM ** -0.5
LOG2E = 1.4426950408889634


def run(kind: str, q, cache, meta, tuning):
    """One launch of the decode or prefill path with explicit launch settings."""
    out = torch.empty_like(q)
    launch = decode_attention._paged_decode if kind == "decode" else attention._paged_prefill
    launch(q, cache, meta, out, SCALE * LOG2E, 0, tuning)
    return out


def sweep(kind: str, shape, configs, kv: str = "bf16", graph_max_seq_len: int = 0) -> list[dict]:
    """Time every setting at one (batch, new tokens, context) shape; errors are recorded.
    graph_max_seq_len > 0 sets the metadata's max_seq_len as a decode CUDA graph does
    (max_model_len), which sizes the launch grid."""
    batch, q_len, ctx = shape
    nbytes = batch * ctx * HK * HEAD_DIM * (2 if kv == "fp8" else 4)
    cache, sets = paged_setup(batch, ctx, q_len, n_sets(nbytes) if kind == "decode" else 2)
    if graph_max_seq_len:
        sets = [(q, dataclasses.replace(m, max_seq_len=graph_max_seq_len)) for q, m in sets]
    if kv == "fp8":
        cache = cache.to(torch.float8_e4m3fn)
    q0, m0 = sets[0]
    ref = attention.paged_attention(q0, cache, m0, SCALE).float()
    rows = []
    for cfg in configs:
        try:
            err = float((run(kind, q0, cache, m0, cfg).float() - ref).norm() / ref.norm())
            us = time_calls([lambda q=q, m=m: run(kind, q, cache, m, cfg) for q, m in sets], reps=15)
        except Exception as exc:  # a setting that does not fit (shared memory, registers)
            rows.append({"kind": kind, "kv": kv, "shape": shape, "cfg": cfg, "error": f"{type(exc).__name__}: {exc}"[:200]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        gbs = batch * ctx * HK * HEAD_DIM * 2 * cache.element_size() / us / 1e3
        rows.append({"kind": kind, "kv": kv, "shape": shape, "cfg": cfg, "us": round(us, 2),
                     "kv_gb_s": round(gbs, 1), "rel_err": err,
                     "graph_max_seq_len": graph_max_seq_len})
        print(json.dumps(rows[-1]), flush=True)
    del cache, sets
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Run the sweep over the Llama-3-8B shapes and print the best settings per shape."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sweep.json")
    ap.add_argument("--decode-shapes", default=None,
                    help="'batch,new,ctx;...': decode shapes over the wide one-partition grid")
    ap.add_argument("--kv", default="bf16", help="cache dtypes for --decode-shapes: bf16,fp8")
    ap.add_argument("--only", default=None, choices=["decode", "prefill"])
    ap.add_argument("--tiles", default=None,
                    help="'block_n,warps,stages;...': restrict --decode-shapes' grid to these tiles")
    ap.add_argument("--graph-max-seq-len", type=int, default=0,
                    help="with --decode-shapes: time as inside a decode CUDA graph captured for this "
                         "max_model_len, each tile with the dispatcher's partition count (and, "
                         "with --partitions, with those counts too)")
    ap.add_argument("--fp8-asm", default="both", choices=["both", "on", "off"],
                    help="fp8 rows: with and without the PTX widening, or only one")
    ap.add_argument("--partitions", default="",
                    help="with --graph-max-seq-len: further partition counts to time, e.g. '8,16,64'")
    args = ap.parse_args()
    prefill_cfgs = [dict(block_m=m, block_n=n, num_warps=w, num_stages=s) for m, n, w, s in
                    [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 32, 8, 3),
                     (64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 4, 3), (256, 64, 8, 2)]]
    decode_cfgs = [dict(partition=p, block_n=n, num_warps=4, num_stages=s)
                   for p in (128, 256, 512) for n in (32, 64, 128) for s in (2, 3)]
    decode_cfgs += [dict(partition=256, block_n=64, num_warps=8, num_stages=2),
                    dict(partition=512, block_n=128, num_warps=8, num_stages=3)]
    rows = []
    if args.only != "decode":
        for shape in ((1, 2048, 2048), (4, 2048, 2048)):
            rows += sweep("prefill", shape, prefill_cfgs)
    if args.decode_shapes:
        tiles = ([tuple(int(v) for v in t.split(",")) for t in args.tiles.split(";")] if args.tiles
                 else [(n, w, s) for n in (16, 32, 64, 128) for w in (2, 4, 8) for s in (1, 2, 3)])
        if args.graph_max_seq_len:
            counts = [None] + [int(c) for c in args.partitions.split(",") if c]
            wide = [dict(block_n=n, num_warps=w, num_stages=s, **({"partitions": c} if c else {}))
                    for n, w, s in tiles for c in counts]
        else:
            wide = [dict(partition=8192, block_n=n, num_warps=w, num_stages=s) for n, w, s in tiles]
        for spec in args.decode_shapes.split(";"):
            shape = tuple(int(v) for v in spec.split(","))
            for kv in args.kv.split(","):
                # fp8: with and without the PTX widening of the cached values (fp8_asm).
                asm = {"both": (False, True), "on": (True,), "off": (False,)}[args.fp8_asm]
                cfgs = [dict(c, fp8_asm=a) for c in wide for a in asm] if kv == "fp8" else wide
                rows += sweep("decode", shape, cfgs, kv, args.graph_max_seq_len)
    elif args.only != "prefill":
        for shape in ((1, 1, 4096), (32, 1, 512), (32, 1, 4096), (256, 1, 4096)):
            rows += sweep("decode", shape, decode_cfgs)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print("\nbest per shape:")
    for kind, kv, shape in sorted({(r["kind"], r.get("kv", "bf16"), tuple(r["shape"])) for r in rows}):
        ok = [r for r in rows if r["kind"] == kind and r.get("kv", "bf16") == kv
              and tuple(r["shape"]) == shape and "us" in r]
        ok.sort(key=lambda r: r["us"])
        default = [r for r in ok if r["cfg"].get("block_n") == 128 and r["cfg"].get("num_warps") == 4
                   and r["cfg"].get("num_stages") == 2
                   and (r["cfg"].get("partition") == 8192
                        or (r.get("graph_max_seq_len") and "partitions" not in r["cfg"]))]
        print(kind, kv, shape, "default", [(r["us"], r.get("kv_gb_s")) for r in default],
              "best", [(r["us"], r.get("kv_gb_s"), r["cfg"]) for r in ok[:4]])


if __name__ == "__main__":
    main()
