"""Time kiln's Triton kernels at Llama-3-8B shapes on one GPU; record JSON and print a table.

Llama-3-8B: hidden 4096, 32 query heads, 8 KV heads, head_dim 128, intermediate 14336; bf16.
Every number is the median of many CUDA-graph replays, divided by the calls in the graph (input
sets are rotated through so the data of one timing exceeds the L2 cache when it can); `eager_us`
is the same with ordinary launches (Python launch overhead included). Bandwidth is the fewest
bytes the op must move (inputs read once, outputs written once) over time, compared with a large
device-to-device copy measured in the same run; prefill is compared in FLOP/s with a large bf16
matrix product and with torch's scaled_dot_product_attention on contiguous K/V.

    PYTHONPATH=. python benchmarks/kernels/bench_kernels.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from kiln.kernels.activation import silu_and_mul, silu_and_mul_ref
from kiln.kernels.attention import paged_attention
from kiln.kernels.attention_ref import paged_attention_ref
from kiln.kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from kiln.kernels.rotary import rotary_and_write_kv, rotary_and_write_kv_ref
from kiln.layers.forward_context import build_attention_metadata

HIDDEN, HQ, HK, HEAD_DIM, INTER = 4096, 32, 8, 128, 14336
DT = torch.bfloat16
BLOCK = 16
ROTATE_BYTES = 200 * 2**20  # about 3x the 60 MB L2: rotate input sets until a timing moves this


def n_sets(bytes_per_call: int, cap: int = 32) -> int:
    """How many input sets to rotate through so one timing moves about ROTATE_BYTES."""
    return max(1, min(cap, math.ceil(ROTATE_BYTES / max(bytes_per_call, 1))))


def time_calls(calls: list[Callable[[], object]], reps: int = 30, graph: bool = True) -> float:
    """Median microseconds per call over `reps` timings of all calls in sequence."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    run: Callable[[], None]
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for c in calls:
                c()
        run = g.replay
    else:
        def run() -> None:
            for c in calls:
                c()
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def both(calls, reps=30) -> tuple[float, float]:
    """(graph-replay us, eager us) per call."""
    return time_calls(calls, reps, graph=True), time_calls(calls, max(5, reps // 3), graph=False)


def measure_ceilings() -> dict:
    """Copy bandwidth (best of a memcpy and an elementwise kernel, graph and eager) and bf16 matmul."""
    x = torch.randn(2**29, device="cuda", dtype=DT)  # 1 GiB
    y = torch.empty_like(x)
    copies = {
        "copy_graph": time_calls([lambda: y.copy_(x)], reps=20),
        "copy_eager": time_calls([lambda: y.copy_(x)], reps=20, graph=False),
        "mul_out_graph": time_calls([lambda: torch.mul(x, 2, out=y)], reps=20),
    }
    read_us = time_calls([lambda: x.sum(dtype=torch.float32)], reps=20)
    del x, y
    a = torch.randn(8192, 8192, device="cuda", dtype=DT)
    b = torch.randn(8192, 8192, device="cuda", dtype=DT)
    mm_us = time_calls([lambda: a @ b], reps=10)
    gbps = {k: 2 * 2**30 / us / 1e3 for k, us in copies.items()}
    return {"copy_GBps": max(gbps.values()), "copy_variants_GBps": gbps,
            "read_only_sum_GBps": 2**30 / read_us / 1e3,
            "matmul_bf16_TFLOPs": 2 * 8192**3 / mm_us / 1e6}


def row(op, shape, nbytes, us, eager_us, ceil, baseline=None, base_us=None, flops=None):
    """One result record (also printed as a JSON line as it is measured)."""
    r = {"op": op, "shape": shape, "bytes": nbytes, "graph_us": round(us, 2), "eager_us": round(eager_us, 2),
         "GBps": round(nbytes / us / 1e3, 1), "frac_copy_bw": round(nbytes / us / 1e3 / ceil["copy_GBps"], 3)}
    if flops is not None:
        r["flops"] = flops
        r["TFLOPs"] = round(flops / us / 1e6, 1)
        r["frac_matmul"] = round(flops / us / 1e6 / ceil["matmul_bf16_TFLOPs"], 3)
    if baseline is not None:
        r["baseline"] = baseline
        r["baseline_us"] = round(base_us, 2)
        r["speedup_vs_baseline"] = round(base_us / us, 2)
    print(json.dumps(r), flush=True)
    return r


def bench_elementwise(ceil) -> list[dict]:
    """RMSNorm, fused add + RMSNorm, SiLU-mul and RoPE + KV write at 1..4096 tokens."""
    rows = []
    for t in (1, 32, 256, 4096):
        nb = 2 * t * HIDDEN * 2 + HIDDEN * 2
        sets = [(torch.randn(t, HIDDEN, device="cuda", dtype=DT), torch.randn(HIDDEN, device="cuda", dtype=DT))
                for _ in range(n_sets(nb))]
        us, eu = both([lambda x=x, w=w: rms_norm(x, w, 1e-5) for x, w in sets])
        ref_us = time_calls([lambda x=x, w=w: rms_norm_ref(x, w, 1e-5) for x, w in sets])
        rows.append(row("rms_norm", [t, HIDDEN], nb, us, eu, ceil, "torch reference", ref_us))

        nb = 4 * t * HIDDEN * 2 + HIDDEN * 2
        sets = [(torch.randn(t, HIDDEN, device="cuda", dtype=DT), torch.randn(t, HIDDEN, device="cuda", dtype=DT),
                 torch.randn(HIDDEN, device="cuda", dtype=DT)) for _ in range(n_sets(nb))]
        us, eu = both([lambda x=x, r=r, w=w: fused_add_rms_norm(x, r, w, 1e-5) for x, r, w in sets])
        ref_us = time_calls([lambda x=x, r=r, w=w: fused_add_rms_norm_ref(x, r, w, 1e-5) for x, r, w in sets])
        rows.append(row("fused_add_rms_norm", [t, HIDDEN], nb, us, eu, ceil, "torch reference", ref_us))

        nb = 3 * t * INTER * 2
        sets = [torch.randn(t, 2 * INTER, device="cuda", dtype=DT) for _ in range(n_sets(nb))]
        us, eu = both([lambda x=x: silu_and_mul(x) for x in sets])
        ref_us = time_calls([lambda x=x: silu_and_mul_ref(x) for x in sets])
        rows.append(row("silu_and_mul", [t, 2 * INTER], nb, us, eu, ceil, "torch reference", ref_us))

        # q read + written, k/v read, k/v written to the cache, positions/slots, cos|sin rows.
        nb = t * (2 * HQ * HEAD_DIM * 2 + 4 * HK * HEAD_DIM * 2 + 16 + HEAD_DIM * 4)
        num_blocks = max(1, math.ceil(t / BLOCK))
        cos_sin = torch.randn(8192, HEAD_DIM, device="cuda")
        sets = []
        for _ in range(n_sets(nb)):
            qkv = torch.randn(t, (HQ + 2 * HK) * HEAD_DIM, device="cuda", dtype=DT)
            q, k, v = (s.view(t, -1, HEAD_DIM) for s in qkv.split([HQ * HEAD_DIM, HK * HEAD_DIM, HK * HEAD_DIM], -1))
            cache = torch.empty(2, num_blocks, BLOCK, HK, HEAD_DIM, device="cuda", dtype=DT)
            pos = torch.randint(0, 8192, (t,), device="cuda")
            slots = torch.randperm(num_blocks * BLOCK, device="cuda")[:t]
            sets.append((q, k, v, pos, cache, slots))
        us, eu = both([lambda a=a: rotary_and_write_kv(a[0], a[1], a[2], a[3], cos_sin, a[4], a[5]) for a in sets])
        # The reference's cache write syncs on the host (a mask check), so it is timed eagerly.
        ref_us = time_calls([lambda a=a: rotary_and_write_kv_ref(a[0], a[1], a[2], a[3], cos_sin, a[4], a[5])
                             for a in sets], graph=False, reps=10)
        rows.append(row("rotary_and_write_kv", [t, HQ, HK, HEAD_DIM], nb, us, eu, ceil,
                        "torch reference (eager)", ref_us))
    return rows


def paged_setup(batch: int, ctx: int, new: int, copies: int):
    """`copies` independent (cache region, metadata, q) sets for `batch` sequences of context ctx."""
    per_seq = math.ceil(ctx / BLOCK)
    num_blocks = per_seq * batch * copies
    cache = torch.randn(2, num_blocks, BLOCK, HK, HEAD_DIM, device="cuda", dtype=DT)
    perm = torch.randperm(num_blocks).tolist()  # fragmented block tables, as after many requests
    sets = []
    for c in range(copies):
        seqs = []
        for b in range(batch):
            first = (c * batch + b) * per_seq
            seqs.append((ctx - new, new, perm[first:first + per_seq]))
        meta = build_attention_metadata(seqs, BLOCK, device="cuda")
        q = torch.randn(batch * new, HQ, HEAD_DIM, device="cuda", dtype=DT)
        sets.append((q, meta))
    return cache, sets


def bench_decode(ceil) -> list[dict]:
    """Decode attention at batch 1/32/256 and contexts 128..4096 (uniform lengths)."""
    rows = []
    scale = HEAD_DIM ** -0.5
    for batch in (1, 32, 256):
        for ctx in (128, 512, 1024, 2048, 4096):
            kv_bytes = batch * ctx * HK * HEAD_DIM * 2 * 2
            nb = kv_bytes + 2 * batch * HQ * HEAD_DIM * 2 + batch * math.ceil(ctx / BLOCK) * 4
            copies = n_sets(nb)
            cache, sets = paged_setup(batch, ctx, 1, copies)
            q0, meta0 = sets[0]
            err = (paged_attention(q0, cache, meta0, scale).float()
                   - paged_attention_ref(q0, cache, meta0, scale).float()).norm()
            err = float(err / paged_attention_ref(q0, cache, meta0, scale).float().norm())
            us, eu = both([lambda q=q, m=m: paged_attention(q, cache, m, scale) for q, m in sets])
            del cache
            # Plain torch equivalent on contiguous K/V (no paging): SDPA with grouped heads.
            sd = []
            for _ in range(copies):
                sd.append((torch.randn(batch, HQ, 1, HEAD_DIM, device="cuda", dtype=DT),
                           torch.randn(batch, HK, ctx, HEAD_DIM, device="cuda", dtype=DT),
                           torch.randn(batch, HK, ctx, HEAD_DIM, device="cuda", dtype=DT)))
            base_us = time_calls([lambda s=s: F.scaled_dot_product_attention(s[0], s[1], s[2], enable_gqa=True)
                                  for s in sd])
            del sd
            r = row("paged_attention decode", [batch, ctx], nb, us, eu, ceil,
                    "SDPA contiguous enable_gqa", base_us)
            r["rel_err_vs_ref"] = err
            rows.append(r)
            torch.cuda.empty_cache()
    return rows


def causal_flops(q_len: int, ctx: int) -> int:
    """QK^T and PV FLOPs for q_len new tokens at the end of a context of ctx keys."""
    pairs = sum(ctx - q_len + i + 1 for i in range(q_len))
    return 4 * HEAD_DIM * HQ * pairs


def bench_prefill(ceil) -> list[dict]:
    """Causal prefill: 1 and 4 prompts of 2048 tokens, and a 2048-token chunk on 2048 cached."""
    rows = []
    scale = HEAD_DIM ** -0.5
    for batch, q_len, ctx in ((1, 2048, 2048), (4, 2048, 2048), (1, 2048, 4096)):
        cache, sets = paged_setup(batch, ctx, q_len, 2)
        q0, meta0 = sets[0]
        ref = paged_attention_ref(q0, cache, meta0, scale).float()
        err = float((paged_attention(q0, cache, meta0, scale).float() - ref).norm() / ref.norm())
        flops = batch * causal_flops(q_len, ctx)
        nb = 2 * batch * q_len * HQ * HEAD_DIM * 2 + batch * ctx * HK * HEAD_DIM * 2 * 2
        us, eu = both([lambda q=q, m=m: paged_attention(q, cache, m, scale) for q, m in sets], reps=20)
        base, base_us = None, None
        if q_len == ctx:
            qs = torch.randn(batch, HQ, q_len, HEAD_DIM, device="cuda", dtype=DT)
            ks = torch.randn(batch, HK, ctx, HEAD_DIM, device="cuda", dtype=DT)
            vs = torch.randn(batch, HK, ctx, HEAD_DIM, device="cuda", dtype=DT)
            base = "SDPA causal contiguous enable_gqa"
            base_us = time_calls([lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                                         enable_gqa=True)], reps=20)
        r = row("paged_attention prefill", [batch, q_len, ctx], nb, us, eu, ceil, base, base_us, flops)
        r["rel_err_vs_ref"] = err
        rows.append(r)
        del cache, sets
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Measure the ceilings and every kernel; write JSON and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    ceil = measure_ceilings()
    print(json.dumps(ceil), flush=True)
    rows = bench_elementwise(ceil) + bench_decode(ceil) + bench_prefill(ceil)
    import triton
    result = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
              "triton": triton.__version__, "dtype": "bfloat16", "ceilings": ceil, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{'op':24s} {'shape':22s} {'graph us':>9s} {'eager us':>9s} {'GB/s':>7s} {'%copy':>6s} "
          f"{'TFLOP/s':>8s} {'base us':>8s} {'x base':>6s}")
    for r in rows:
        print(f"{r['op'][:24]:24s} {str(r['shape']):22s} {r['graph_us']:9.1f} {r['eager_us']:9.1f} "
              f"{r['GBps']:7.0f} {100 * r['frac_copy_bw']:5.0f}% {r.get('TFLOPs', float('nan')):8.1f} "
              f"{r.get('baseline_us', float('nan')):8.1f} {r.get('speedup_vs_baseline', float('nan')):6.2f}")


if __name__ == "__main__":
    main()
