"""Host time to queue one operation of a 128-token 8B prefill: bf16 F.linear, row-wise fp8
torch._scaled_mm, a kiln Triton launch (quant_per_token) and torch.empty, on the GPU.

Each operation is queued --calls times over the 8B's four projection shapes in turn, timing each
call on the host (perf_counter around the call: the time until it returns, not the kernel's);
the device is synchronised only between groups. Median and 90th percentile in microseconds, and
--json writes them. CUDA only.

    python benchmarks/profile/host_op_cost.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kiln.kernels.quant_act import quant_per_token  # noqa: E402

# (N, K) of qkv_proj, o_proj, gate_up_proj, down_proj in Llama-3-8B
SHAPES = ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336))


def host_us(fn, calls: int) -> dict:
    """Median and p90 host microseconds of fn(i) over ``calls`` calls (after 20 unmeasured)."""
    for i in range(20):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for i in range(calls):
        t = time.perf_counter()
        fn(i)
        times.append(1e6 * (time.perf_counter() - t))
        if i % 50 == 49:
            torch.cuda.synchronize()  # keep the queue short
    torch.cuda.synchronize()
    times.sort()
    return {"median_us": statistics.median(times), "p90_us": times[int(0.9 * len(times))],
            "calls": calls}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=128)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dev = torch.device("cuda")
    m = args.m
    xs = {k: torch.randn(m, k, device=dev, dtype=torch.bfloat16) for _, k in SHAPES}
    wb = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5 for n, k in SHAPES]
    w8 = [w.to(torch.float8_e4m3fn) for w in wb]
    s8 = [torch.ones(1, n, device=dev, dtype=torch.float32) for n, _ in SHAPES]
    q8 = {k: quant_per_token(x, torch.float8_e4m3fn, pad_rows_to=16) for k, x in xs.items()}
    n_shapes = len(SHAPES)

    def linear(i):
        j = i % n_shapes
        F.linear(xs[SHAPES[j][1]], wb[j])

    def scaled_mm(i):
        j = i % n_shapes
        q, s = q8[SHAPES[j][1]]
        torch._scaled_mm(q, w8[j].t(), scale_a=s, scale_b=s8[j], out_dtype=torch.bfloat16,
                         use_fast_accum=True)

    def triton_quant(i):
        quant_per_token(xs[SHAPES[i % n_shapes][1]], torch.float8_e4m3fn, pad_rows_to=16)

    def empty(i):
        torch.empty(m, SHAPES[i % n_shapes][0], device=dev, dtype=torch.bfloat16)

    out = {"m": m, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, fn in (("F.linear bf16", linear), ("torch._scaled_mm fp8 row-wise", scaled_mm),
                     ("Triton quant_per_token", triton_quant), ("torch.empty", empty)):
        out[name] = host_us(fn, args.calls)
        r = out[name]
        print(f"  {name:32s} median {r['median_us']:7.1f} us   p90 {r['p90_us']:7.1f} us")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
