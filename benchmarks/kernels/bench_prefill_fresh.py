"""Prefill attention of fresh prompts at Llama-3-8B shapes (bf16): the paged kernel, the
contiguous-K/V kernel (kiln.kernels.prefill_fresh) at several launch settings, and torch's SDPA
backends as a baseline measured in the same run. With --fp8: an fp8 cache, the paged kernel
against the contiguous kernel reading the codes beside it (float16), at the 1000 x 128/128 run's
prefill step (256 x 128 tokens) and others.

    PYTHONPATH=. python benchmarks/kernels/bench_prefill_fresh.py [--fp8] --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import BLOCK, HEAD_DIM, HK, HQ, paged_setup, time_calls  # noqa: E402
from kiln.kernels import attention  # noqa: E402
from kiln.kernels.prefill_fresh import fresh_prefill_attention  # noqa: E402

SCALE = HEAD_DIM ** -0.5
LOG2E = 1.4426950408889634
CONFIGS = [dict(block_m=m, block_n=n, num_warps=w, num_stages=s) for m, n, w, s in
           [(128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3),
            (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4)]]


def causal_flops(batch: int, n: int) -> float:
    """QK^T and PV over the causal triangle (with the diagonal), all query heads."""
    return 4.0 * batch * HQ * HEAD_DIM * n * (n + 1) / 2


def fp8_rows() -> list[dict]:
    """fp8 cache (k_scale 0.05, v_scale 0.02): paged kernel against the fresh kernel on codes."""
    rows = []
    k_scale, v_scale = 0.05, 0.02
    for batch, n in [(256, 128), (64, 128), (16, 512), (1, 2048)]:
        cache, sets = paged_setup(batch, n, n, 1)
        q, meta = sets[0]
        t = q.shape[0]
        slots = meta.slot_mapping.view(-1).long()
        cache8 = (cache.float() * 4).clamp(-448, 448).to(torch.float8_e4m3fn)
        flat = cache8.view(2, -1, HK, HEAD_DIM)
        k, v = flat[0, slots].to(torch.float16), flat[1, slots].to(torch.float16)
        out = torch.empty_like(q)
        qk = SCALE * LOG2E * k_scale
        flops = causal_flops(batch, n)

        def paged():
            attention._paged_prefill(q, cache8, meta, out, qk, 0, v_scale=v_scale)
        paged()
        ref = out.float().clone()
        configs = [None] + [dict(block_m=m, block_n=b, num_warps=w, num_stages=st)
                            for m, b, w, st in [(128, 64, 8, 3), (128, 128, 8, 3), (64, 32, 4, 4)]]
        calls = [("paged fp8", paged, None)] + [
            ("fresh fp8 codes", lambda c=c: fresh_prefill_attention(
                q, k, v, meta.query_start_loc, n, SCALE, out, c, fp8_scales=(k_scale, v_scale)), c)
            for c in configs]
        for name, fn, cfg in calls:
            try:
                fn()
                err = float((out.float() - ref).norm() / ref.norm())
                us = time_calls([fn], reps=20)
                row = {"shape": [batch, n], "kernel": name, "cfg": cfg, "us": round(us, 2),
                       "tflops": round(flops / us / 1e6, 1), "rel_err_vs_paged": err, "tokens": t}
            except Exception as exc:  # noqa: BLE001
                row = {"shape": [batch, n], "kernel": name, "cfg": cfg,
                       "error": f"{type(exc).__name__}: {exc}"[:200]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del cache, cache8, sets
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--fp8", action="store_true", help="fp8 cache: paged kernel against codes")
    args = ap.parse_args()
    if args.fp8:
        rows = fp8_rows()
        if args.json:
            Path(args.json).write_text(json.dumps({"block": BLOCK, "rows": rows}, indent=1))
        return
    rows = []
    for batch, n in [(1, 2048), (1, 4096), (64, 128), (16, 512)]:
        cache, sets = paged_setup(batch, n, n, 1)
        q, meta = sets[0]
        t = q.shape[0]
        k = torch.randn(t, HK, HEAD_DIM, device="cuda", dtype=q.dtype)
        v = torch.randn_like(k)
        # The paged kernel reads the same keys/values from the cache.
        slots = meta.slot_mapping.view(-1)
        flat = cache.view(2, -1, HK, HEAD_DIM)
        flat[0, slots] = k
        flat[1, slots] = v
        flops = causal_flops(batch, n)
        out = torch.empty_like(q)

        def paged():
            attention._paged_prefill(q, cache, meta, out, SCALE * LOG2E, 0)
        paged()
        ref = out.float().clone()

        def record(name, fn, cfg=None):
            try:
                fn()
                err = float((out.float() - ref).norm() / ref.norm())
                us = time_calls([fn], reps=20)
            except Exception as exc:  # a setting that does not fit
                rows.append({"shape": [batch, n], "kernel": name, "cfg": cfg,
                             "error": f"{type(exc).__name__}: {exc}"[:200]})
                print(json.dumps(rows[-1]), flush=True)
                return
            rows.append({"shape": [batch, n], "kernel": name, "cfg": cfg, "us": round(us, 2),
                         "tflops": round(flops / us / 1e6, 1), "rel_err_vs_paged": err})
            print(json.dumps(rows[-1]), flush=True)

        record("paged (default)", paged)
        for cfg in CONFIGS:
            record("fresh", lambda cfg=cfg: fresh_prefill_attention(
                q, k, v, meta.query_start_loc, n, SCALE, out, cfg), cfg)
        qb = q.view(batch, n, HQ, HEAD_DIM).transpose(1, 2)
        kb = k.view(batch, n, HK, HEAD_DIM).transpose(1, 2)
        vb = v.view(batch, n, HK, HEAD_DIM).transpose(1, 2)
        for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            be = getattr(torch.nn.attention.SDPBackend, backend)

            def sdpa(be=be):
                with torch.nn.attention.sdpa_kernel(be):
                    o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=SCALE,
                                                       enable_gqa=True)
                out.view(batch, n, HQ, HEAD_DIM).copy_(o.transpose(1, 2))
            record(f"torch sdpa {backend} (+ copy)", sdpa)
        del cache, sets
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"block": BLOCK, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
