"""Time the fused producer kernels of fp8 engines at Llama-3-8B shapes: SiLU-mul + per-token fp8
quantization (gate_up output 2 x 14336 -> down_proj input) and residual-add + RMSNorm + fp8
quantization (hidden 4096), at decode batch sizes and a prefill chunk. Bytes are what each must
move once (inputs read, outputs written); the ratio is to a device copy in the same run.

    PYTHONPATH=. python benchmarks/kernels/bench_fused_quant.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json

import torch

from bench_kernels import measure_ceilings, n_sets, time_calls
import triton

from kiln.kernels.activation import _silu_and_mul_quant_kernel, silu_and_mul_quant
from kiln.kernels.quant_act import quantized_rows_buffers
from kiln.kernels.rmsnorm import _rms_norm_quant_kernel, fused_add_rms_norm_quant

HIDDEN, INTER = 4096, 14336
FP8 = torch.float8_e4m3fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--rows", default="256,512,1000,1024,8192")
    ap.add_argument("--warps", default="4,8,16,32", help="num_warps of the direct launches")
    args = ap.parse_args()
    copy = measure_ceilings()["copy_GBps"]
    rows = []
    for m in (int(r) for r in args.rows.split(",")):
        nb = m * 2 * INTER * 2 + m * INTER + m * 4
        sets = [torch.randn(m, 2 * INTER, device="cuda", dtype=torch.bfloat16) for _ in range(n_sets(nb))]
        us = time_calls([lambda x=x: silu_and_mul_quant(x, FP8) for x in sets])
        rows.append({"op": "silu_and_mul_quant", "rows": m, "us": round(us, 2),
                     "GBps": round(nb / us / 1e3, 1), "frac_copy": round(nb / us / 1e3 / copy, 3)})
        print(json.dumps(rows[-1]), flush=True)
        q, s = quantized_rows_buffers(m, INTER, FP8, "cuda")
        ref = silu_and_mul_quant(sets[0], FP8)
        for nw in (int(w) for w in args.warps.split(",")):
            def launch(x, nw=nw):
                _silu_and_mul_quant_kernel[(q.shape[0],)](x, q, s, x.stride(0), q.stride(0), m, INTER,
                                                          IS_INT8=False, BLOCK=16384, num_warps=nw)
            launch(sets[0])
            same = bool(torch.equal(q[:m].view(torch.uint8), ref.q[:m].view(torch.uint8)))
            us = time_calls([lambda x=x: launch(x) for x in sets])
            rows.append({"op": f"silu_and_mul_quant w{nw}", "rows": m, "us": round(us, 2),
                         "GBps": round(nb / us / 1e3, 1), "same_codes": same})
            print(json.dumps(rows[-1]), flush=True)
        del sets
        nb = m * HIDDEN * 2 * 3 + m * HIDDEN + m * 4 + HIDDEN * 2
        w = torch.randn(HIDDEN, device="cuda", dtype=torch.bfloat16)
        sets = [(torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16),
                 torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16)) for _ in range(n_sets(nb))]
        us = time_calls([lambda x=x, r=r: fused_add_rms_norm_quant(x, r, w, 1e-5, FP8) for x, r in sets])
        rows.append({"op": "fused_add_rms_norm_quant", "rows": m, "us": round(us, 2),
                     "GBps": round(nb / us / 1e3, 1), "frac_copy": round(nb / us / 1e3 / copy, 3)})
        print(json.dumps(rows[-1]), flush=True)
        q, s = quantized_rows_buffers(m, HIDDEN, FP8, "cuda")
        for nw in (1, 2, 4, 8, 16):
            def launch(x, r, nw=nw):
                _rms_norm_quant_kernel[(q.shape[0],)](
                    x, r, w, q, s, x.stride(0), r.stride(0), q.stride(0), m, HIDDEN, 1e-5,
                    out_ty=triton.language.bfloat16, HAS_RESIDUAL=True, IS_INT8=False, BLOCK=HIDDEN,
                    num_warps=nw)
            us = time_calls([lambda x=x, r=r: launch(x, r) for x, r in sets])
            rows.append({"op": f"fused_add_rms_norm_quant w{nw}", "rows": m, "us": round(us, 2),
                         "GBps": round(nb / us / 1e3, 1)})
            print(json.dumps(rows[-1]), flush=True)
        del sets
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_GBps": copy, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
