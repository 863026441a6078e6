"""`kiln bench throughput`: N requests submitted at once; output tokens/s and requests/s."""

from __future__ import annotations

import argparse
import time


from kiln.bench import clocks, common, cost
from kiln.sampling_params import RequestOutputKind, SamplingParams


def add_args(p: argparse.ArgumentParser) -> None:
    """Flags of `kiln bench throughput`."""
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--range-ratio", type=float, default=0.0,
                   help="lengths uniform in len*(1-r)..len*(1+r)")
    p.add_argument("--dataset", default=None, help="JSONL with prompt/prompt_token_ids and output_len")
    p.add_argument("--baseline-num-prompts", type=int, default=64,
                   help="requests given to the baseline (it is run on a subset)")


def run(args: argparse.Namespace, engine_kwargs: dict) -> dict:
    """Run the throughput benchmark; returns the result dict."""
    from tqdm import tqdm

    engine, startup = common.start_engine(args.model, engine_kwargs)
    device = engine.device
    vocab = engine.model.args.vocab_size
    if args.dataset:
        prompts, outs = common.load_jsonl_dataset(args.dataset, engine.tokenizer, args.num_prompts)
    else:
        prompts = common.random_prompts(args.num_prompts, args.input_len, vocab, args.seed,
                                        args.range_ratio)
        outs = common.output_lens(args.num_prompts, args.output_len, args.seed, args.range_ratio)
    # Warm-up on a few requests so one-time compilation stays out of the timing.
    for i in range(min(4, len(prompts))):
        engine.add_request(f"warm{i}", {"prompt_token_ids": prompts[i][:16]},
                           SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    common.sync(device)
    sampler = clocks.start(device, getattr(args, "gpu_clocks", True))
    sampler.mark("run")
    t0 = time.perf_counter()
    for i, (p, n) in enumerate(zip(prompts, outs)):
        engine.add_request(str(i), {"prompt_token_ids": p},
                           SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                                          output_kind=RequestOutputKind.FINAL_ONLY))
    done, gen = 0, 0
    with tqdm(total=len(prompts), desc="throughput", unit="req", disable=not args.progress) as bar:
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done += 1
                    gen += len(out.outputs[0].token_ids)
                    bar.update(1)
    common.sync(device)
    elapsed = time.perf_counter() - t0
    gpu_clocks = clocks.finish(sampler)
    in_tokens = sum(len(p) for p in prompts)
    stats = engine.stats()
    result = {
        "benchmark": "throughput", "model": args.model, "num_prompts": len(prompts),
        "input_len": args.input_len, "output_len": args.output_len, "dataset": args.dataset,
        "elapsed_seconds": elapsed, "startup_seconds": startup,
        "requests_per_s": done / elapsed, "output_tokens_per_s": gen / elapsed,
        "total_tokens_per_s": (gen + in_tokens) / elapsed, "output_tokens": gen,
        "num_preemptions": stats.get("num_preemptions"),
        # Kernel variants compiled during the run (or the warm-up before it): each one stalled a step.
        "kernel_compiles_after_startup": stats.get("kernel_compiles_after_startup"),
        "num_kv_blocks": stats.get("num_total_kv_blocks"),
        "engine": common.engine_settings(engine),
        "environment": common.environment(device),
    }
    if gpu_clocks:
        result["gpu_clocks"] = gpu_clocks
    if args.baseline == "hf":
        model_dir, dtype = engine.config.model.model, engine.dtype
        del engine
        common.free_device_memory(device)
        result["baseline"] = _hf_baseline(model_dir, dtype, device, prompts, outs, args)
        result["speedup_vs_hf"] = result["output_tokens_per_s"] / result["baseline"]["output_tokens_per_s"]
    cost.add_costs(result, args.cost_per_hour, result["total_tokens_per_s"])
    return result


def _hf_baseline(model_dir, dtype, device, prompts, outs, args) -> dict:
    from kiln.bench.baseline_hf import hf_generate_seconds, load_hf_model

    model = load_hf_model(model_dir, dtype, device)
    n = min(args.baseline_num_prompts, len(prompts))
    new_tokens = max(outs[:n])
    hf_generate_seconds(model, prompts[:2], 2, device)  # warm-up
    secs = hf_generate_seconds(model, prompts[:n], new_tokens, device)
    return {"name": "hf-transformers generate (one padded batch)", "num_prompts": n,
            "output_tokens_per_s": n * new_tokens / secs, "requests_per_s": n / secs}


def print_result(r: dict) -> None:
    """A short human-readable summary."""
    print(f"throughput: {r['num_prompts']} requests in {r['elapsed_seconds']:.2f} s: "
          f"{r['requests_per_s']:.2f} req/s, {r['output_tokens_per_s']:.0f} output tok/s, "
          f"{r['total_tokens_per_s']:.0f} total tok/s (preemptions {r['num_preemptions']}, "
          f"kernels compiled after start-up {r.get('kernel_compiles_after_startup')})")
    if r.get("gpu_clocks"):
        print("  GPU during the run: " + clocks.describe(r["gpu_clocks"], r["gpu_clocks"].get("limits")))
    common.print_footer(r, lambda b: f"baseline {b['name']} on {b['num_prompts']} requests: "
                                     f"{b['output_tokens_per_s']:.0f} output tok/s -> kiln "
                                     f"x{r['speedup_vs_hf']:.2f}")
