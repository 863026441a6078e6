"""Batch-latency A/B of runtime switches in one process: one engine, its decode graphs captured
again for each variant, the variants interleaved round by round.

`benchmarks/run_variants_h200.sh` starts a process per variant, which costs the 8B model's load
and every graph capture each time (about 40 s a variant on the H200). Switches that kiln reads
when it launches a kernel (KILN_ATTN_ROPE, KILN_GEMV_EARLY_W, KILN_TC_GEMV, ...)
take effect at the next capture, so here the model loads once and each variant costs its
capture and its iterations. Switches read when the engine is built (KILN_PRODUCER_QUANT, the
GEMV candidate lists) do not: use run_variants_h200.sh for those.

    python benchmarks/ab_latency.py --model DIR --variants "base=;rope=KILN_ATTN_ROPE=1" \\
        --rounds 3 --json OUT.json

Each round runs every variant in order (warm-up iterations, then --num-iters timed ones, as
`kiln bench latency` times them); a variant's decode tok/s is the median over its rounds. On a
machine without CUDA the engine runs eagerly (nothing is captured): a smoke test only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys

import torch


def parse_variants(text: str) -> list[tuple[str, dict[str, str]]]:
    """"name=ENV=VALUE ENV2=VALUE;name2=" -> [(name, {ENV: VALUE, ...}), ...]."""
    variants = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, settings = item.partition("=")
        env = {}
        for token in settings.split():
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise SystemExit(f"variant {name!r}: {token!r} is not ENV=VALUE")
            env[key] = value
        if not name or name in (v[0] for v in variants):
            raise SystemExit(f"variant names must be unique and non-empty, got {name!r}")
        variants.append((name, env))
    if not variants:
        raise SystemExit("--variants names no variant")
    return variants


def short_kernel_name(name: str) -> str:
    """A kernel's name without template arguments and parameter lists."""
    return name.split("(")[0].split("<")[0].strip()[:60]


def step_increments(kernels: list[tuple[str, float, float]]) -> dict[str, list[float]]:
    """kernels: (name, start us, end us) of one stream, in launch order. A kernel's increment is
    how far its end moves the latest end so far: under programmatic dependent launch kernels
    start before the one before them ends and wait inside, so their durations overlap, but the
    increments of a step add up to the step's span. Returns name -> increments (us)."""
    out: dict[str, list[float]] = {}
    latest = None
    for name, start, end in sorted(kernels, key=lambda k: k[1]):
        inc = end - start if latest is None else max(0.0, end - latest)
        latest = end if latest is None else max(latest, end)
        out.setdefault(short_kernel_name(name), []).append(inc)
    return out


def profile_decode(engine, prompts, params, tag: str) -> list[tuple[str, float, float]]:
    """One generation under torch.profiler: its CUDA kernels as (name, start us, end us)."""
    from torch.profiler import ProfilerActivity, profile

    from kiln.bench import latency
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        latency._one_iteration(engine, prompts, params, tag)
        torch.cuda.synchronize()
    return [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start]


def summarize_profile(kernels: list[tuple[str, float, float]], steps: int, top: int = 14) -> dict:
    """Per kernel name: launches and increment (us) a decode step, largest first."""
    incs = step_increments(kernels)
    rows = sorted(((name, len(v) / steps, sum(v) / steps) for name, v in incs.items()),
                  key=lambda r: -r[2])
    return {"steps": steps, "span_us_per_step": sum(r[2] for r in rows),
            "kernels": [{"name": n, "launches_per_step": c, "us_per_step": u}
                        for n, c, u in rows[:top]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model or engine directory (default: the demo)")
    p.add_argument("--variants", required=True, help='"name=ENV=V ENV2=V;name2=..." (";"-separated)')
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-iters", type=int, default=2)
    p.add_argument("--num-iters-warmup", type=int, default=1)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--profile-tokens", type=int, default=0,
                   help="after each variant's last round, profile one generation of this many "
                        "tokens and print each kernel's share of a step (CUDA)")
    args = p.parse_args(argv)
    variants = parse_variants(args.variants)
    touched = sorted({key for _, env in variants for key in env})
    base_env = {key: os.environ.get(key) for key in touched}

    from kiln.bench import common, latency
    from kiln.sampling_params import SamplingParams

    max_len = args.input_len + args.output_len + 16
    engine, startup = common.start_engine(args.model, dict(
        dtype=args.dtype, device=args.device, max_num_seqs=args.batch_size,
        max_model_len=max_len, cuda_graph_sizes=[args.batch_size]))
    graphs = engine.device.type == "cuda" and engine.runner.graphs is not None
    vocab = engine.model.args.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    runs: dict[str, list[dict]] = {name: [] for name, _ in variants}
    profiles: dict[str, dict] = {}
    seed = 0
    for rnd in range(args.rounds):
        for name, env in variants:
            for key in touched:  # this variant's settings over the starting environment
                value = env.get(key, base_env[key])
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if graphs:
                engine.runner.graphs = None
                gc.collect()
                torch.cuda.empty_cache()
                engine.runner.capture_decode_graphs(args.batch_size, max_len, [args.batch_size])
            ttfts, totals = [], []
            for it in range(args.num_iters_warmup + args.num_iters):
                seed += 1
                prompts = common.random_prompts(args.batch_size, args.input_len, vocab, seed)
                ttft, total = latency._one_iteration(engine, prompts, params, f"{name}-{rnd}-{it}")
                if it >= args.num_iters_warmup:
                    ttfts.append(ttft)
                    totals.append(total)
            ttft, total = statistics.median(ttfts), statistics.median(totals)
            tpot = (total - ttft) / (args.output_len - 1)
            run = {"round": rnd, "ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3,
                   "decode_tokens_per_s": args.batch_size / tpot}
            runs[name].append(run)
            print(f"round {rnd} {name:12s} TPOT {run['tpot_ms']:.3f} ms  decode "
                  f"{run['decode_tokens_per_s']:.1f} tok/s", flush=True)
            if args.profile_tokens and rnd == args.rounds - 1 and graphs:
                seed += 1
                prompts = common.random_prompts(args.batch_size, args.input_len, vocab, seed)
                kernels = profile_decode(engine, prompts, SamplingParams(
                    temperature=0.0, max_tokens=args.profile_tokens, ignore_eos=True),
                    f"{name}-profile")
                profiles[name] = summarize_profile(kernels, args.profile_tokens - 1)
                print(f"  {name}: {profiles[name]['span_us_per_step']:.1f} us of kernel span a "
                      f"decode step (the prompt's step included, spread over the steps)")
                for k in profiles[name]["kernels"]:
                    print(f"    {k['us_per_step']:8.1f} us  x{k['launches_per_step']:5.1f}  {k['name']}")
    result = {
        "benchmark": "ab_latency", "model": args.model, "batch_size": args.batch_size,
        "input_len": args.input_len, "output_len": args.output_len, "rounds": args.rounds,
        "num_iters": args.num_iters, "startup_seconds": startup, "graphs": graphs,
        "kernel_compiles_after_startup": engine.stats().get("kernel_compiles_after_startup"),
        "environment": common.environment(engine.device),
        "variants": {name: {"env": env, "runs": runs[name],
                            "decode_tokens_per_s": statistics.median(
                                r["decode_tokens_per_s"] for r in runs[name]),
                            **({"profile": profiles[name]} if name in profiles else {})}
                     for name, env in variants},
    }
    print("variant       median decode tok/s (rounds)")
    for name, v in result["variants"].items():
        each = " ".join(f"{r['decode_tokens_per_s']:.1f}" for r in v["runs"])
        print(f"{name:12s}  {v['decode_tokens_per_s']:.1f}  ({each})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
