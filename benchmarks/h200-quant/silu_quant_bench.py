"""The fused SiLU-mul + fp8 per-token quantization at #7's decode shape (8B: intermediate 14336,
1000 rows), timed at each KILN_SILU_QUANT_WARPS: microseconds a call (bench_kernels.time_calls: a
CUDA graph of 20 calls, median of 30 replays), the bytes it moves (bf16 gate/up read, fp8 codes and
float32 scales written) over that time, and whether the codes and scales equal the default's bits.

  PYTHONPATH=. python3 benchmarks/h200-quant/silu_quant_bench.py [ROWS] [INTER]
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernels"))
from bench_kernels import time_calls  # noqa: E402
from kiln.kernels.activation import silu_and_mul_quant  # noqa: E402


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    inter = int(sys.argv[2]) if len(sys.argv) > 2 else 14336
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(rows, 2 * inter, generator=gen, device="cuda") * 3).to(torch.bfloat16)
    moved = rows * (2 * inter * 2 + inter + 4)
    results, ref = [], None
    for warps in ("", "4", "8", "16", "32"):
        os.environ["KILN_SILU_QUANT_WARPS"] = warps
        got = silu_and_mul_quant(x, torch.float8_e4m3fn)
        codes, scales = got.q[:rows].view(torch.uint8).clone(), got.scale[:rows].clone()
        if ref is None:
            ref = codes, scales
        same = torch.equal(codes, ref[0]) and torch.equal(scales, ref[1])
        us = time_calls([lambda: silu_and_mul_quant(x, torch.float8_e4m3fn)] * 20)
        results.append({"warps": warps or "default", "us": round(us, 2),
                        "GB/s": round(moved / us / 1e3, 1), "same_bits": same})
        print(f"warps {warps or 'default':>7}: {us:7.2f} us  {moved / us / 1e3:7.1f} GB/s  "
              f"same bits as default: {same}", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "silu_quant_bench.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows, "inter": inter,
                       "bytes": moved, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
