"""Where the GPU sat idle in a Chrome trace from profile_engine.py --trace.

Prints the GPU span and busy time, the idle gaps longer than --min-us grouped by the kernels
around them, and the longest gaps with the CUDA runtime calls the host made meanwhile (a long
gap with no runtime call means the host was busy in Python, e.g. a garbage-collection pass).

    python benchmarks/profile/trace_gaps.py TRACE.json[.gz] [--min-us 10]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--min-us", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    opener = gzip.open if args.trace.endswith(".gz") else open
    with opener(args.trace, "rt") as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    gpu = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                 key=lambda e: e["ts"])
    runtime = sorted((e for e in events if e.get("cat") == "cuda_runtime"), key=lambda e: e["ts"])
    t0 = gpu[0]["ts"]
    print("gpu span us", round(gpu[-1]["ts"] + gpu[-1]["dur"] - t0),
          "busy us", round(sum(e["dur"] for e in gpu)))
    gaps = []
    end, prev = gpu[0]["ts"], gpu[0]
    for e in gpu:
        if e["ts"] - end > args.min_us:
            gaps.append((end - t0, e["ts"] - end, prev["name"][:40], e["name"][:40]))
        if e["ts"] + e["dur"] > end:
            end, prev = e["ts"] + e["dur"], e
    print(f"gaps > {args.min_us} us:", len(gaps), "total us", round(sum(g[1] for g in gaps)))
    by_pair: collections.Counter = collections.Counter()
    for g in gaps:
        by_pair[(g[2], g[3])] += g[1]
    for pair, us in by_pair.most_common(args.top):
        print(f"  {us:10.0f} us  {pair[0]} -> {pair[1]}")
    for at, dur, before, after in sorted(gaps, key=lambda g: -g[1])[:args.top]:
        calls = [(r["name"], round(r["dur"])) for r in runtime
                 if r["ts"] - t0 < at + dur and r["ts"] + r["dur"] - t0 > at]
        print(f"  at {at / 1e3:9.1f} ms gap {dur:8.0f} us  {before} -> {after}  runtime={calls[:5]}")


if __name__ == "__main__":
    main()
