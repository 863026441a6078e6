"""`kiln bench latency`: one batch, fixed input and output lengths; TTFT, TPOT, tokens/s, GB/s."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kiln.bench import clocks, common, cost
from kiln.bench.stats import distribution_ms
from kiln.sampling_params import SamplingParams


def add_args(p: argparse.ArgumentParser) -> None:
    """Flags of `kiln bench latency`."""
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-iters", type=int, default=5)
    p.add_argument("--num-iters-warmup", type=int, default=2)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers that a decode step reads (tied tensors once).

    An input-embedding table is read one row per token, so it counts only where it is tied to
    (and so read in full as) the output projection. Rotary cos/sin caches count in full, an
    overestimate of a few MB.
    """
    from kiln.layers.embedding import LMHead, VocabEmbedding

    tied = {m._tied[0].weight.data_ptr() for m in model.modules()
            if isinstance(m, LMHead) and m.is_tied}
    skip = {m.weight.data_ptr() for m in model.modules()
            if isinstance(m, (VocabEmbedding, torch.nn.Embedding))} - tied
    seen, total = set(skip), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _one_iteration(engine, prompts, params, tag: str) -> tuple[float, float]:
    """(TTFT, total seconds) for one batch run to completion."""
    for i, p in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": p}, params)
    common.sync(engine.device)
    t0 = time.perf_counter()
    ttft = None
    started: set[str] = set()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.outputs[0].token_ids:
                started.add(out.request_id)
        if ttft is None and len(started) == len(prompts):
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


def run(args: argparse.Namespace, engine_kwargs: dict) -> dict:
    """Run the latency benchmark; returns the result dict (also printed)."""
    from tqdm import tqdm

    engine, startup = common.start_engine(args.model, engine_kwargs)
    device = engine.device
    vocab = engine.model.args.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    ttfts, totals = [], []
    iters = args.num_iters_warmup + args.num_iters
    sampler = clocks.start(device, getattr(args, "gpu_clocks", True))
    for it in tqdm(range(iters), desc="latency", unit="iter", disable=not args.progress):
        # Fresh prompts each iteration, so the prefix cache cannot shorten prefill.
        prompts = common.random_prompts(args.batch_size, args.input_len, vocab, args.seed + it)
        if it == args.num_iters_warmup:
            sampler.mark("run")  # the timed iterations
        ttft, total = _one_iteration(engine, prompts, params, f"it{it}")
        if it >= args.num_iters_warmup:
            ttfts.append(ttft)
            totals.append(total)
    gpu_clocks = clocks.finish(sampler)
    ttft = statistics.median(ttfts)
    total = statistics.median(totals)
    # With one output token there is no decode step: TPOT and decode bandwidth are undefined.
    decode_steps = args.output_len - 1
    tpot = (total - ttft) / decode_steps if decode_steps > 0 else None
    wbytes = weight_bytes(engine.model)
    args_m = engine.model.args
    kv_token_bytes = (2 * args_m.num_hidden_layers * args_m.num_key_value_heads * args_m.head_dim
                      * torch.empty((), dtype=engine.dtype).element_size())
    mean_ctx = args.input_len + args.output_len / 2
    step_bytes = wbytes + args.batch_size * mean_ctx * kv_token_bytes
    result = {
        "benchmark": "latency",
        "model": args.model, "batch_size": args.batch_size, "input_len": args.input_len,
        "output_len": args.output_len, "num_iters": args.num_iters,
        "startup_seconds": startup,
        "ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3 if tpot else None, "total_seconds": total,
        # over the timed iterations (the figures above are their medians): mean, p50, p90, p99
        "ttft_distribution": distribution_ms(ttfts), "latency_distribution": distribution_ms(totals),
        "prefill_tokens_per_s": args.batch_size * args.input_len / ttft,
        "decode_tokens_per_s": args.batch_size / tpot if tpot else None,
        "output_tokens_per_s": args.batch_size * args.output_len / total,
        "weight_bytes": wbytes,
        "achieved_gbs": step_bytes / tpot / 1e9 if tpot else None,
        "engine": common.engine_settings(engine),
        "kernel_compiles_after_startup": engine.stats().get("kernel_compiles_after_startup"),
        "environment": common.environment(device),
    }
    if gpu_clocks:
        result["gpu_clocks"] = gpu_clocks
    copy_bw = common.copy_bandwidth_gbs(device) if tpot else None
    if copy_bw:
        result["copy_bandwidth_gbs"] = copy_bw
        result["share_of_copy_bandwidth"] = result["achieved_gbs"] / copy_bw
    if args.baseline == "hf":
        model_dir, dtype = engine.config.model.model, engine.dtype
        del engine
        common.free_device_memory(device)
        result["baseline"] = _hf_baseline(model_dir, dtype, device, args, vocab)
        result["speedup_vs_hf"] = result["output_tokens_per_s"] / result["baseline"]["output_tokens_per_s"]
    # priced per output token, and per prompt and output token over the batch's end-to-end time
    cost.add_costs(result, args.cost_per_hour,
                   args.batch_size * (args.input_len + args.output_len) / total)
    return result


def _hf_baseline(model_dir, dtype, device, args, vocab) -> dict:
    from kiln.bench.baseline_hf import hf_generate_seconds, load_hf_model

    model = load_hf_model(model_dir, dtype, device)
    prompts = common.random_prompts(args.batch_size, args.input_len, vocab, args.seed)
    hf_generate_seconds(model, prompts, 4, device)  # warm-up
    ttft = statistics.median(hf_generate_seconds(model, prompts, 1, device) for _ in range(3))
    total = statistics.median(hf_generate_seconds(model, prompts, args.output_len, device)
                              for _ in range(max(1, min(args.num_iters, 3))))
    tpot = (total - ttft) / (args.output_len - 1) if args.output_len > 1 else None
    return {"name": "hf-transformers generate", "ttft_ms": ttft * 1e3,
            "tpot_ms": tpot * 1e3 if tpot else None,
            "decode_tokens_per_s": args.batch_size / tpot if tpot else None,
            "output_tokens_per_s": args.batch_size * args.output_len / total}


def print_result(r: dict) -> None:
    """A short human-readable summary."""
    print(f"latency: batch {r['batch_size']}, in {r['input_len']}, out {r['output_len']}")
    if r["tpot_ms"] is None:
        print(f"  TTFT {r['ttft_ms']:.2f} ms   prefill {r['prefill_tokens_per_s']:.0f} tok/s   "
              "(one output token: no decode step)")
    else:
        print(f"  TTFT {r['ttft_ms']:.2f} ms   TPOT {r['tpot_ms']:.3f} ms   "
              f"decode {r['decode_tokens_per_s']:.1f} tok/s   "
              f"output {r['output_tokens_per_s']:.1f} tok/s")
        line = (f"  weights read per step {r['weight_bytes'] / 1e9:.2f} GB   "
                f"achieved {r['achieved_gbs']:.0f} GB/s")
        if "share_of_copy_bandwidth" in r:
            line += (f" = {100 * r['share_of_copy_bandwidth']:.1f}% of measured copy bandwidth "
                     f"{r['copy_bandwidth_gbs']:.0f} GB/s")
        print(line)
    lat, first = r.get("latency_distribution"), r.get("ttft_distribution")
    if lat and first:
        print(f"  over {r['num_iters']} iterations: latency mean {lat['mean_ms']:.1f} ms, "
              f"p50 {lat['p50_ms']:.1f}, p90 {lat['p90_ms']:.1f}, p99 {lat['p99_ms']:.1f}; "
              f"TTFT p50 {first['p50_ms']:.2f}, p99 {first['p99_ms']:.2f} ms")
    if r.get("gpu_clocks"):
        print("  GPU while timed: " + clocks.describe(r["gpu_clocks"], r["gpu_clocks"].get("limits")))

    def baseline_line(b: dict) -> str:
        tpot = f"{b['tpot_ms']:.3f} ms" if b["tpot_ms"] is not None else "-"
        return (f"baseline {b['name']}: TTFT {b['ttft_ms']:.2f} ms, TPOT {tpot}, "
                f"{b['output_tokens_per_s']:.1f} tok/s -> kiln x{r['speedup_vs_hf']:.2f}")

    common.print_footer(r, baseline_line)
