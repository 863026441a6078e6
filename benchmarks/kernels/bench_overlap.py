"""Can decode attention (memory-bound) overlap the GEMMs (compute-bound) of another half-batch?

A large-batch decode step of Llama-3-8B runs, per layer, qkv -> attention -> o -> gate_up -> down.
This times L such layers (random weights, decode attention over a bf16 paged cache at context
CTX) three ways, each as one CUDA graph:

- `full`: one batch of B sequences, one stream;
- `halves`: two halves of B/2 one after the other on one stream (the GEMMs' row-count cost);
- `two_streams`: the two halves as independent chains on two streams, so the GPU may run one
  half's attention beside the other half's GEMMs.

Also the GEMMs alone and the attention alone at B and B/2 rows. If `two_streams` is well below
`halves`, splitting the engine's large decode batches into two interleaved halves would pay.

    PYTHONPATH=. python3 benchmarks/kernels/bench_overlap.py --json OUT.json [--schemes fp8,bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench_kernels  # noqa: E402
from bench_kernels import HEAD_DIM, paged_setup  # noqa: E402
from kiln.kernels import decode_attention  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
SCALE = HEAD_DIM ** -0.5


def layer_weights(scheme: str, dev):
    out = {}
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        if scheme.startswith("fp8"):
            out[name] = (w.to(torch.float8_e4m3fn), torch.rand(1, n, device=dev) + 0.5)
        else:
            out[name] = (w, None)
    return out


def gemm(x, w, ws, fast: bool):
    if ws is None:
        return torch.nn.functional.linear(x, w)
    sx = x[1]
    return torch._scaled_mm(x[0], w.t(), scale_a=sx, scale_b=ws, out_dtype=torch.bfloat16,
                            use_fast_accum=fast)


class Half:
    """Inputs of one (half-)batch: activations for each GEMM and a paged decode setup."""

    def __init__(self, rows: int, ctx: int, scheme: str, dev):
        def act(k):
            x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
            if scheme.startswith("fp8"):
                return (x.to(torch.float8_e4m3fn), torch.rand(rows, 1, device=dev) + 0.5)
            return x
        self.x = {"qkv": act(4096), "o": act(4096), "gate_up": act(4096), "down": act(14336)}
        self.cache, sets = paged_setup(rows, ctx, 1, 1)
        self.q, self.meta = sets[0]
        self.out = torch.empty_like(self.q)

    def layer(self, scheme, weights, fast, parts=("gemm", "attn")):
        for name in ("qkv", "attn", "o", "gate_up", "down"):
            if name == "attn":
                if "attn" in parts:
                    decode_attention._paged_decode(self.q, self.cache, self.meta, self.out,
                                                   SCALE * 1.4426950408889634, 0, None)
            elif "gemm" in parts:
                w, ws = weights[name]
                gemm(self.x[name], w, ws, fast)


def run_scheme(scheme: str, batch: int, ctx: int, layers: int, reps: int) -> dict:
    dev = torch.device("cuda")
    fast = scheme.endswith("fast")
    weights = [layer_weights(scheme, dev) for _ in range(layers)]
    full = Half(batch, ctx, scheme, dev)
    a, b = Half(batch // 2, ctx, scheme, dev), Half(batch - batch // 2, ctx, scheme, dev)
    s2 = torch.cuda.Stream()

    def t(fn):
        return bench_kernels.time_calls([fn], reps=reps) / layers

    res = {}
    res["full"] = t(lambda: [full.layer(scheme, w, fast) for w in weights])
    res["full_gemm_only"] = t(lambda: [full.layer(scheme, w, fast, ("gemm",)) for w in weights])
    res["full_attn_only"] = t(lambda: [full.layer(scheme, w, fast, ("attn",)) for w in weights])
    res["half_gemm_only"] = t(lambda: [a.layer(scheme, w, fast, ("gemm",)) for w in weights])
    res["half_attn_only"] = t(lambda: [a.layer(scheme, w, fast, ("attn",)) for w in weights])

    def halves():
        for w in weights:
            a.layer(scheme, w, fast)
            b.layer(scheme, w, fast)
    res["halves"] = t(halves)

    def two_streams(offset: bool):
        # a on the main stream, b on s2; with offset, b's layer l waits for a's layer l, so b
        # runs about a layer behind a (b's attention issued beside a's later GEMMs).
        main = torch.cuda.current_stream()
        s2.wait_stream(main)
        for w in weights:
            a.layer(scheme, w, fast)
            if offset:
                ev = torch.cuda.Event()
                ev.record(main)
                s2.wait_event(ev)
                with torch.cuda.stream(s2):
                    b.layer(scheme, w, fast)
        if not offset:
            with torch.cuda.stream(s2):
                for w in weights:
                    b.layer(scheme, w, fast)
        main.wait_stream(s2)
    res["two_streams"] = t(lambda: two_streams(False))
    res["two_streams_offset"] = t(lambda: two_streams(True))
    res = {k: round(v, 2) for k, v in res.items()}
    res["overlap_gain"] = round(1 - res["two_streams"] / res["halves"], 4)
    print(f"{scheme} B={batch} ctx={ctx}: " + "  ".join(f"{k} {v}" for k, v in res.items()),
          flush=True)
    del weights, full, a, b
    torch.cuda.empty_cache()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="fp8,fp8fast,bf16")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--ctx", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    out = {"batch": args.batch, "ctx": args.ctx, "layers": args.layers, "us_per_layer": {}}
    for scheme in args.schemes.split(","):
        out["us_per_layer"][scheme] = run_scheme(scheme, args.batch, args.ctx, args.layers,
                                                 args.reps)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
