"""Where the GPU time of an engine workload goes: kernels by total time, grouped, against wall time.

Runs N requests (input/output lengths fixed, ignore_eos, greedy) through LLMEngine.step() and
profiles the steps in [--skip-steps, --skip-steps + --steps) (all steps when --steps is 0) with
torch.profiler. Prints the wall time per step, the summed kernel time (GPU busy), and the kernels
and kernel groups that took the most time; --json writes the same.

    python benchmarks/profile/profile_engine.py --model DIR --num-prompts 1 --input-len 128 \
        --output-len 96 --skip-steps 16 --steps 64 --json OUT.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kiln.bench import common  # noqa: E402
from kiln.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402

# Kernel-name fragments (lower case) per group, first match wins.
GROUPS = [
    ("attention", ("attn", "attention", "flash", "paged", "_decode_partition", "_decode_reduce",
                   "_prefill_kernel", "splitkv")),
    ("quant-matmul", ("_gemv_kernel", "_gemm_kernel", "splitk_reduce")),
    ("act-quant", ("quant_act", "per_token", "_act_quant")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "sm90", "wgmma", "scaled_mm")),
    ("rmsnorm", ("rms", "norm")),
    ("rotary+kv-write", ("rotary", "rope", "write_kv")),
    ("silu-mul", ("silu", "swiglu", "act_and_mul")),
    ("sampling", ("argmax", "sample", "softmax", "topk", "sort", "gumbel", "exponential")),
    ("copy/fill", ("copy", "memcpy", "memset", "fill", "cat", "index", "gather", "scatter")),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def kernel_table(prof, cuda: bool) -> dict[str, list]:
    """{kernel name: [calls, ms]} of the device-side events of a profile (on a CPU run, a smoke
    test: the host self time of the aten ops)."""
    kernels: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for evt in prof.key_averages():
        if not cuda:
            dev_us = evt.self_cpu_time_total if evt.key.startswith("aten::") else 0.0
        elif evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        else:
            dev_us = getattr(evt, "self_device_time_total", None)
            if dev_us is None:
                dev_us = getattr(evt, "self_cuda_time_total", 0.0)
        if dev_us > 0:
            kernels[evt.key][0] += evt.count
            kernels[evt.key][1] += dev_us / 1e3
    return kernels


def write_host_profile(prof: cProfile.Profile, path: str, r: dict) -> None:
    """The host functions that took the time of the profiled steps, by cumulative and own time."""
    buf = io.StringIO()
    buf.write(f"{r['profiled_steps']} steps, wall {r['wall'] * 1e3:.1f} ms (under cProfile)\n")
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(40)
    Path(path).write_text(buf.getvalue())
    print(buf.getvalue()[:6000])


def workload_args(p: argparse.ArgumentParser, num_prompts: int, output_len: int,
                  max_num_seqs: int) -> None:
    """The model and workload options the profiling scripts share (their own defaults)."""
    p.add_argument("--model", required=True)
    p.add_argument("--num-prompts", type=int, default=num_prompts)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=output_len)
    p.add_argument("--max-num-seqs", type=int, default=max_num_seqs)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_args(p, num_prompts=1, output_len=96, max_num_seqs=256)
    p.add_argument("--skip-steps", type=int, default=0)
    p.add_argument("--steps", type=int, default=0, help="steps to profile (0: all after the skipped)")
    p.add_argument("--no-async-scheduling", action="store_true")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--label", default="")
    p.add_argument("--json", default=None)
    p.add_argument("--trace", default=None,
                   help="also export a Chrome trace (host ops + kernels) of the profiled steps")
    p.add_argument("--host-profile", default=None,
                   help="instead of kernels: cProfile the host side of the profiled steps into "
                        "this text file (top functions by cumulative and by own time)")
    args = p.parse_args()

    kwargs = dict(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                  enforce_eager=args.enforce_eager, kv_cache_dtype=args.kv_cache_dtype)
    if args.no_async_scheduling:
        kwargs["async_scheduling"] = False
    engine, startup = common.start_engine(args.model, kwargs)
    vocab = engine.model.args.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True,
                            output_kind=RequestOutputKind.FINAL_ONLY)

    def run(tag: str, profile: bool) -> dict:
        prompts = common.random_prompts(args.num_prompts, args.input_len, vocab, hash(tag) % 1000)
        for i, ids in enumerate(prompts):
            engine.add_request(f"{tag}-{i}", {"prompt_token_ids": ids}, params)
        step = 0
        prof = None
        end = args.skip_steps + args.steps if args.steps else None
        t0 = t1 = None
        while engine.has_unfinished_requests():
            if profile and step == args.skip_steps:
                common.sync(engine.device)
                if args.host_profile:
                    prof = cProfile.Profile()  # a context manager like torch's profiler
                else:
                    # Kernels only on a GPU (less host overhead in the measured wall time), unless
                    # a trace is asked for: it shows what the host did while the GPU idled.
                    acts = [torch.profiler.ProfilerActivity.CUDA if engine.device.type == "cuda"
                            else torch.profiler.ProfilerActivity.CPU]
                    if args.trace:
                        acts = [torch.profiler.ProfilerActivity.CPU] + (
                            [torch.profiler.ProfilerActivity.CUDA]
                            if engine.device.type == "cuda" else [])
                    prof = torch.profiler.profile(activities=acts)
                prof.__enter__()
                t0 = time.perf_counter()
            engine.step()
            step += 1
            if prof is not None and t1 is None and end is not None and step == end:
                common.sync(engine.device)
                t1 = time.perf_counter()
                prof.__exit__(None, None, None)
        if prof is not None and t1 is None:
            common.sync(engine.device)
            t1 = time.perf_counter()
            prof.__exit__(None, None, None)
        return {"steps": step, "prof": prof, "wall": (t1 - t0) if t0 else None,
                "profiled_steps": (min(end, step) if end else step) - args.skip_steps}

    run("warmup", profile=False)
    r = run("measure", profile=True)
    prof = r["prof"]
    if args.host_profile:
        write_host_profile(prof, args.host_profile, r)
        return
    if args.trace:
        prof.export_chrome_trace(args.trace)
    kernels = kernel_table(prof, engine.device.type == "cuda")
    busy = sum(v[1] for v in kernels.values())
    wall_ms = r["wall"] * 1e3
    n = max(1, r["profiled_steps"])
    groups: dict[str, float] = defaultdict(float)
    for name, (_, ms) in kernels.items():
        groups[group_of(name)] += ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:args.top]
    out = {
        "label": args.label, "model": args.model, "num_prompts": args.num_prompts,
        "input_len": args.input_len, "output_len": args.output_len,
        "max_num_seqs": args.max_num_seqs, "profiled_steps": n, "startup_seconds": startup,
        "async_scheduling": engine.async_scheduling, "cuda_graphs": engine.runner.graphs is not None,
        "wall_ms": wall_ms, "gpu_busy_ms": busy, "wall_ms_per_step": wall_ms / n,
        "gpu_busy_ms_per_step": busy / n,
        "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top_kernels": [{"name": k, "calls": c, "ms": ms, "us_per_call": 1e3 * ms / max(1, c)}
                        for k, (c, ms) in top],
        "environment": common.environment(engine.device),
    }
    print(f"== {args.label or args.model}: {n} steps, wall {wall_ms:.1f} ms ({wall_ms / n:.3f}/step), "
          f"GPU busy {busy:.1f} ms ({busy / n:.3f}/step, {100 * busy / wall_ms:.1f}%), "
          f"graphs {out['cuda_graphs']}, async {out['async_scheduling']}")
    for g, ms in out["groups_ms"].items():
        print(f"  {g:16s} {ms:9.2f} ms  {100 * ms / busy:5.1f}%")
    for k in out["top_kernels"][:args.top]:
        print(f"  {k['ms']:9.2f} ms {k['calls']:7d}x {k['us_per_call']:8.2f} us  {k['name'][:90]}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
