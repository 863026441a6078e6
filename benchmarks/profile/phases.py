"""Where a throughput workload's time goes, phase by phase, from one engine start.

Runs N requests of fixed input/output length (greedy, ignore_eos) twice, timed: the whole workload
and its prefill alone (output length 1). The decode phase is the difference. Then it profiles each
of the two with torch.profiler (kernels only) and reports kernel groups and the top kernels, so
that the decode phase's kernels are the whole run's minus the prefill run's. With --shapes the
prefill run (eager, no CUDA graphs) is also profiled with input shapes, which splits the GEMM time
by (M, N, K).

    python benchmarks/profile/phases.py --model DIR --num-prompts 1000 --input-len 128 \
        --output-len 128 --max-num-seqs 1024 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.profile.profile_engine import group_of, kernel_table, workload_args  # noqa: E402
from kiln.bench import common  # noqa: E402
from kiln.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402


def drive(engine, prompts, params, tag: str) -> tuple[float, int]:
    """Add every prompt, step until done; (seconds, steps)."""
    common.sync(engine.device)
    t0 = time.perf_counter()
    for i, ids in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": ids}, params)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    common.sync(engine.device)
    return time.perf_counter() - t0, steps


def gemm_shapes(prof) -> list[dict]:
    """Device time of the matmul ops by input shapes (ops recorded on the host: eager steps only)."""
    rows = []
    for evt in prof.key_averages(group_by_input_shape=True):
        if evt.key not in ("aten::mm", "aten::addmm", "aten::_scaled_mm", "aten::linear",
                           "aten::matmul"):
            continue
        if evt.key in ("aten::linear", "aten::matmul"):
            continue  # their children (mm/addmm) carry the same time
        dev_us = getattr(evt, "device_time_total", None)
        if dev_us is None:
            dev_us = getattr(evt, "cuda_time_total", 0.0)
        rows.append({"op": evt.key, "shapes": str(evt.input_shapes)[:160], "calls": evt.count,
                     "ms": dev_us / 1e3})
    return sorted(rows, key=lambda r: -r["ms"])


def summarize(kernels: dict[str, list], top: int) -> dict:
    busy = sum(v[1] for v in kernels.values())
    groups: dict[str, float] = defaultdict(float)
    for name, (_, ms) in kernels.items():
        groups[group_of(name)] += ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]
    return {"gpu_busy_ms": busy,
            "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": k, "calls": c, "ms": ms, "us_per_call": 1e3 * ms / max(1, c)}
                            for k, (c, ms) in ranked]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_args(p, num_prompts=1000, output_len=128, max_num_seqs=1024)
    p.add_argument("--shapes", action="store_true", help="GEMM time by shape in the prefill run")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--label", default="")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    engine, startup = common.start_engine(args.model, dict(
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_dtype=args.kv_cache_dtype))
    vocab = engine.model.args.vocab_size
    out: dict = {"label": args.label, "model": args.model, "num_prompts": args.num_prompts,
                 "input_len": args.input_len, "output_len": args.output_len,
                 "max_num_seqs": args.max_num_seqs,
                 "max_num_batched_tokens": args.max_num_batched_tokens,
                 "kv_cache_dtype": args.kv_cache_dtype,
                 "startup_seconds": startup, "environment": common.environment(engine.device)}
    phases = {"whole": args.output_len, "prefill": 1}
    for name, out_len in phases.items():
        params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        prompts = common.random_prompts(args.num_prompts, args.input_len, vocab, 7 + out_len)
        seconds, steps = drive(engine, prompts, params, f"{name}-t")
        out[name] = {"seconds": seconds, "steps": steps,
                     "output_tok_s": args.num_prompts * out_len / seconds}
        print(f"== {name}: {seconds:.3f} s, {steps} steps", flush=True)
        cuda = engine.device.type == "cuda"
        acts = [torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU]
        shapes = args.shapes and name == "prefill"
        if shapes and cuda:
            acts.append(torch.profiler.ProfilerActivity.CPU)
        # Other prompts than the timed run's: the same ones would hit the prefix cache.
        prompts = common.random_prompts(args.num_prompts, args.input_len, vocab, 1007 + out_len)
        with torch.profiler.profile(activities=acts, record_shapes=shapes) as prof:
            prof_seconds, _ = drive(engine, prompts, params, f"{name}-p")
        out[name]["profiled_seconds"] = prof_seconds
        out[name].update(summarize(kernel_table(prof, cuda), args.top))
        if shapes:
            out[name]["gemm_shapes"] = gemm_shapes(prof)[:args.top]
    w, f = out["whole"], out["prefill"]
    out["decode"] = {"seconds": w["seconds"] - f["seconds"], "steps": w["steps"] - f["steps"],
                     "gpu_busy_ms": w["gpu_busy_ms"] - f["gpu_busy_ms"],
                     "groups_ms": {g: ms - f["groups_ms"].get(g, 0.0)
                                   for g, ms in w["groups_ms"].items()}}
    for name in ("whole", "prefill", "decode"):
        r = out[name]
        print(f"== {name}: {r['seconds']:.3f} s over {r['steps']} steps, GPU busy "
              f"{r['gpu_busy_ms']:.1f} ms")
        for g, ms in r["groups_ms"].items():
            print(f"  {g:16s} {ms:9.1f} ms")
    for name in ("whole", "prefill"):
        print(f"-- top kernels, {name}")
        for k in out[name]["top_kernels"]:
            print(f"  {k['ms']:9.1f} ms {k['calls']:7d}x {k['us_per_call']:9.2f} us  {k['name'][:100]}")
    for r in out["prefill"].get("gemm_shapes", []):
        print(f"  {r['ms']:9.1f} ms {r['calls']:6d}x {r['op']:18s} {r['shapes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
