"""Where the GPU idles in a Chrome trace from profile_engine.py --trace: the gaps between
consecutive device activities (kernels, copies, fills), their total, and the largest ones with the
device activity on either side and the host operations that began inside them.

    python3 benchmarks/profile/gaps.py TRACE.json [--min-us 5] [--top 25] [--json OUT]
"""

from __future__ import annotations

import argparse
import bisect
import json
from collections import Counter

DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
HOST_CATS = {"cpu_op", "user_annotation", "python_function", "cuda_runtime", "cuda_driver"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--min-us", type=float, default=5.0, help="gaps shorter than this are ignored")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    events = json.load(open(args.trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    dev = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS),
                 key=lambda e: e["ts"])
    host = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in HOST_CATS),
                  key=lambda e: e["ts"])
    host_ts = [e["ts"] for e in host]
    if not dev:
        raise SystemExit("no device activity in the trace")
    gaps = []
    end = dev[0]["ts"] + dev[0]["dur"]
    prev = dev[0]
    for e in dev[1:]:
        if e["ts"] - end >= args.min_us:
            gaps.append((e["ts"] - end, end, prev["name"], e["name"]))
        if e["ts"] + e["dur"] > end:
            end, prev = e["ts"] + e["dur"], e
    span = end - dev[0]["ts"]
    busy_idle = sum(g[0] for g in gaps)
    by_pair = Counter()
    for g in gaps:
        by_pair[(g[2][:60], g[3][:60])] += g[0]
    top = []
    for dur, start, before, after in sorted(gaps, reverse=True)[:args.top]:
        lo = bisect.bisect_left(host_ts, start)
        hi = bisect.bisect_left(host_ts, start + dur)
        ops = Counter(e["name"][:50] for e in host[lo:hi])
        top.append({"us": round(dur, 1), "at_ms": round((start - dev[0]["ts"]) / 1e3, 2),
                    "before": before[:80], "after": after[:80],
                    "host_ops_started": ops.most_common(6)})
    summary = {"span_ms": round(span / 1e3, 2), "idle_ms": round(busy_idle / 1e3, 2),
               "gaps": len(gaps), "min_us": args.min_us,
               "idle_by_neighbours_ms": [(a, b, round(us / 1e3, 2))
                                         for (a, b), us in by_pair.most_common(12)],
               "largest": top}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
