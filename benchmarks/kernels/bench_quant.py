"""Time kiln's quantized linear kernels at Llama-3-8B shapes on one GPU; record JSON, print a table.

Shapes (N <- K): qkv 6144 <- 4096, o 4096 <- 4096, gate_up 28672 <- 4096, down 4096 <- 14336, at
M in {1, 8, 64, 256, 2048} rows. Paths: bf16 torch matmul (baseline, same run), int4 weight-only
(group 128), int8 weight-only, fp8 W8A8, int8 W8A8 (SmoothQuant); each through its dispatcher,
plus the alternatives the dispatchers choose between (GEMV vs tl.dot kernel at small M,
torch._scaled_mm vs Triton fp8, torch._int_mm vs Triton int8) so the thresholds can be set
from data. Times are medians of CUDA-graph replays per call, rotating weight sets so one
timing moves > 200 MB (3x the L2). GB/s counts weight + scale bytes + activations in/out once;
TFLOP/s is 2*M*N*K over time. Each path is checked against its reference in the same run.

The kernels run twice: with the default launch configs (KILN_QUANT_AUTOTUNE=0) and autotuned;
the configs the autotuner picked are printed and recorded.

    PYTHONPATH=. python3 benchmarks/kernels/bench_quant.py --json OUT.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import torch

import bench_kernels  # noqa: E402  (this folder: the shared CUDA-event timer)
from kiln.kernels import quant_matmul as qm
from kiln.kernels.quant_ref import (fp8_linear_ref, int4_wo_linear_ref, int8_sq_linear_ref,
                                    int8_wo_linear_ref)
from kiln.kernels.quant_act import quant_per_token

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
MS = [1, 8, 64, 256, 2048]
GROUP = 128
LAYERS = 32
LM_HEAD = (128256, 4096)
DEVICE = "cuda"


def n_sets(nbytes: int) -> int:
    """Weight sets to rotate through (at most 16: quantized weights are small)."""
    return bench_kernels.n_sets(nbytes, cap=16)


def time_calls(calls: list[Callable[[], object]], reps: int = 25, graph: bool = True) -> float:
    """Median microseconds per call (bench_kernels' timer, 25 replays by default)."""
    return bench_kernels.time_calls(calls, reps, graph)


def ceilings() -> dict:
    """Device-to-device copy bandwidth and a large bf16 matmul, measured in this run."""
    x = torch.randn(2**29, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_us = time_calls([lambda: y.copy_(x)], reps=10, graph=False)
    del x, y
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_us = time_calls([lambda: a @ b], reps=10)
    return {"copy_GBps": 2 * 2**30 / copy_us / 1e3, "matmul_bf16_TFLOPs": 2 * 8192**3 / mm_us / 1e6}


def make_weights(scheme: str, n: int, k: int) -> tuple:
    """Random quantized weights of one scheme (bytes counted by weight_bytes)."""
    dev = DEVICE
    if scheme == "bf16":
        return (torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02,)
    if scheme == "int4":
        return (torch.randint(0, 256, (n, k // 2), device=dev, dtype=torch.uint8),
                torch.rand(n, k // GROUP, device=dev) * 0.01 + 1e-3)
    if scheme in ("int8", "int8sq"):
        return (torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8),
                torch.rand(n, device=dev) * 1e-3 + 1e-4)
    if scheme == "fp8":
        return ((torch.randn(n, k, device=dev) * 50).clamp(-448, 448).to(torch.float8_e4m3fn),
                torch.rand(n, device=dev) * 1e-3 + 1e-4)
    raise ValueError(scheme)


def weight_bytes(ws: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in ws)


def paths(scheme: str, m: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (fn(x, weights), reference fn(x, weights)) for the variants worth timing at m rows."""
    out: dict[str, tuple[Callable, Callable]] = {}
    if scheme == "bf16":
        ref = lambda x, w: (x.float() @ w[0].float().T).to(x.dtype)  # noqa: E731
        out["torch"] = (lambda x, w: x @ w[0].T, ref)
        if m <= qm.GEMV_MAX_M:  # the Triton GEMV on unquantized weights (KILN_TRITON_GEMV=1)
            out["triton_gemv"] = (lambda x, w: qm.float_gemv_linear(x, w[0]), ref)
        return out
    if scheme == "int4":
        ref = lambda x, w: int4_wo_linear_ref(x, w[0], w[1], GROUP)  # noqa: E731
        out["dispatch"] = (lambda x, w: qm.int4_wo_linear(x, w[0], w[1], GROUP), ref)
        kern = lambda path: (lambda x, w: qm.launch(x, w[0], w[1], w[1].stride(1), GROUP, qm.W_INT4,  # noqa: E731
                                                      None, x.dtype, path), ref)
    elif scheme == "int8":
        ref = lambda x, w: int8_wo_linear_ref(x, w[0], w[1])  # noqa: E731
        out["dispatch"] = (lambda x, w: qm.int8_wo_linear(x, w[0], w[1]), ref)
        kern = lambda path: (lambda x, w: qm.launch(x, w[0].view(torch.uint8), w[1], 0, qm.KTILE_8BIT,  # noqa: E731
                                                      qm.W_INT8_U, None, x.dtype, path), ref)
    elif scheme == "fp8":
        ref = lambda x, w: fp8_linear_ref(x, w[0], w[1])  # noqa: E731
        out["dispatch"] = (lambda x, w: qm.fp8_linear(x, w[0], w[1]), ref)

        def kern(path):
            def f(x, w):
                xq, sx = quant_per_token(x, torch.float8_e4m3fn)
                return qm.launch(xq, w[0], w[1], 0, qm.KTILE_8BIT, qm.W_FP8, None, x.dtype, path, x_scales=sx)
            return f, ref
        out["scaled_mm"] = (lambda x, w: qm.fp8_scaled_mm(x, w[0], w[1], None, x.dtype), ref)
        out["scaled_mm_fast"] = (lambda x, w: qm.fp8_scaled_mm(x, w[0], w[1], None, x.dtype, True), ref)
    else:  # int8sq
        ref = lambda x, w: int8_sq_linear_ref(x, w[0], w[1])  # noqa: E731
        out["dispatch"] = (lambda x, w: qm.int8_sq_linear(x, w[0], w[1]), ref)

        def kern(path):
            def f(x, w):
                xq, sx = quant_per_token(x, torch.int8)
                if path == "gemv":
                    return qm.launch(xq, w[0].view(torch.uint8), w[1], 0, qm.KTILE_8BIT, qm.W_INT8_U, None,
                                     x.dtype, path, x_scales=sx)
                return qm.launch(xq, w[0], w[1], 0, qm.KTILE_8BIT, qm.W_INT8, None, x.dtype, path, x_scales=sx)
            return f, ref
        if m > 16:
            out["int_mm"] = (lambda x, w: qm.int8_sq_int_mm(x, w[0], w[1], None, x.dtype), ref)
    if m <= qm.GEMV_MAX_M:
        out["gemv"] = kern("gemv")
    if m <= 64:
        out["gemm"] = kern("gemm")
    return out


def bench_shape(name: str, n: int, k: int, ms: list[int], schemes: list[str], ceil: dict,
                tag: str) -> list[dict]:
    rows = []
    for scheme in schemes:
        probe = make_weights(scheme, n, k)
        per_set = weight_bytes(probe)
        sets = [probe] + [make_weights(scheme, n, k) for _ in range(n_sets(per_set) - 1)]
        for m in ms:
            xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in sets]
            for pname, (fn, ref) in paths(scheme, m).items():
                rec = {"tag": tag, "shape": name, "N": n, "K": k, "M": m, "scheme": scheme, "path": pname}
                try:
                    err = (fn(xs[0], sets[0]).double() - ref(xs[0], sets[0]).double()).norm()
                    rec["rel_err"] = float(err / ref(xs[0], sets[0]).double().norm())
                    us = time_calls([lambda x=x, w=w: fn(x, w) for x, w in zip(xs, sets)])
                except Exception as exc:  # record and go on: one failing path must not end the run
                    rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    print(json.dumps(rec), flush=True)
                    rows.append(rec)
                    continue
                nbytes = per_set + m * k * 2 + m * n * 2
                rec.update(us=round(us, 2), bytes=nbytes, GBps=round(nbytes / us / 1e3, 1),
                           frac_copy_bw=round(nbytes / us / 1e3 / ceil["copy_GBps"], 3),
                           TFLOPs=round(2 * m * n * k / us / 1e6, 2))
                print(json.dumps(rec), flush=True)
                rows.append(rec)
            del xs
        del sets, probe
        torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_bf16 = bf16 torch time / this time, for the same shape and M (same run)."""
    base = {(r["shape"], r["M"]): r["us"] for r in rows if r["scheme"] == "bf16" and "us" in r}
    for r in rows:
        b = base.get((r["shape"], r["M"]))
        if b and "us" in r:
            r["speedup_vs_bf16"] = round(b / r["us"], 2)


def chosen_configs() -> list[dict]:
    """The autotuner's picks so far: kernel, tuning key, config."""
    out = []
    for kname, kernel in qm.tuned_kernels().items():
        for key, cfg in kernel.cache.items():
            out.append({"kernel": kname, "key": [str(v) for v in key], "config": str(cfg)})
    return out


def decode_estimate(rows: list[dict], tag: str) -> dict:
    """Linear-layer time per token at M=1 for 32 layers (dispatch paths) + a bf16 lm_head."""
    est = {}
    lm = next((r["us"] for r in rows if r["shape"] == "lm_head" and "us" in r), None)
    for scheme in sorted({r["scheme"] for r in rows}):
        t = [next((r["us"] for r in rows if r["tag"] == tag and r["scheme"] == scheme and r["M"] == 1
                   and r["shape"] == s and r["path"] in ("dispatch", "torch") and "us" in r), None)
             for s in SHAPES]
        if all(v is not None for v in t):
            per_token = LAYERS * sum(t) + (lm or 0.0)
            est[scheme] = {"linear_us_per_token": round(per_token, 1),
                           "tok_per_s_if_only_linears": round(1e6 / per_token, 1)}
    return est


def table(rows: list[dict]) -> str:
    lines = [f"{'tag':8s} {'shape':8s} {'M':>5s} {'scheme':7s} {'path':10s} {'us':>9s} {'GB/s':>7s} "
             f"{'%bw':>5s} {'TFLOP/s':>8s} {'x bf16':>7s} {'rel_err':>8s}"]
    for r in rows:
        if "us" not in r:
            lines.append(f"{r['tag']:8s} {r['shape']:8s} {r['M']:5d} {r['scheme']:7s} {r['path']:10s} "
                         f"ERROR {r['error'][:80]}")
            continue
        lines.append(f"{r['tag']:8s} {r['shape']:8s} {r['M']:5d} {r['scheme']:7s} {r['path']:10s} "
                     f"{r['us']:9.2f} {r['GBps']:7.0f} {100 * r['frac_copy_bw']:5.0f} {r['TFLOPs']:8.1f} "
                     f"{r.get('speedup_vs_bf16', float('nan')):7.2f} {r['rel_err']:8.1e}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--quick", action="store_true", help="M in {1, 64, 2048} and no default-config pass")
    ap.add_argument("--schemes", default="bf16,int4,int8,fp8,int8sq")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 1
    torch.manual_seed(0)
    schemes = args.schemes.split(",")
    ms = [1, 64, 2048] if args.quick else MS
    t0 = time.time()
    ceil = ceilings()
    print(json.dumps({"ceilings": ceil}), flush=True)
    props = torch.cuda.get_device_properties(0)
    rows: list[dict] = []
    passes = [("tuned", "1")] if args.quick else [("default", "0"), ("tuned", "1")]
    for tag, flag in passes:
        os.environ["KILN_QUANT_AUTOTUNE"] = flag
        for name in args.shapes.split(","):
            n, k = SHAPES[name]
            rows += bench_shape(name, n, k, ms, [s for s in schemes if s != "bf16" or tag == "tuned"], ceil, tag)
    if "bf16" in schemes:
        rows += bench_shape("lm_head", *LM_HEAD, [1], ["bf16"], ceil, "tuned")
    add_ratios(rows)
    result = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
              "ceilings": ceil, "rows": rows, "autotuned_configs": chosen_configs(),
              "decode_estimate": {tag: decode_estimate(rows, tag) for tag, _ in passes},
              "wall_s": round(time.time() - t0, 1)}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    for c in result["autotuned_configs"]:
        print("autotuned", c["kernel"], c["key"], c["config"])
    print(json.dumps({"decode_estimate": result["decode_estimate"]}))
    print(table(rows))
    bad = [r for r in rows if "error" in r or r.get("rel_err", 0) > 2e-2]
    print(f"{len(rows)} rows, {len(bad)} failed or inaccurate, {result['wall_s']} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
