"""Where #7's fp8 1000 x 128/128 spends its GPU time, for one kiln tree (whichever `import kiln`
finds: run it from the tree's directory with PYTHONPATH set to it). The workload of
`kiln bench throughput` is run once timed, then once under torch.profiler (CUDA kernels only);
prints the wall time of each, the host time inside engine.step, and the kernels' totals.

  cd TREE && PYTHONPATH=TREE python3 /path/to/profile_tp.py ENGINE_DIR [TOP]
"""
import sys
import time

import torch

import kiln
from kiln.bench import common
from kiln.cli import build_parser, engine_kwargs
from kiln.sampling_params import RequestOutputKind, SamplingParams


def workload(engine, prompts, outs, tag):
    for i, (p, n) in enumerate(zip(prompts, outs)):
        engine.add_request(f"{tag}{i}", {"prompt_token_ids": p},
                           SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                                          output_kind=RequestOutputKind.FINAL_ONLY))
    steps, host = 0, 0.0
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        engine.step()
        host += time.perf_counter() - t
        steps += 1
    return steps, host


def main():
    model, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
    print("kiln from", kiln.__file__)
    args = build_parser().parse_args(
        ["bench", "throughput", "--model", model, "--num-prompts", "1000", "--input-len", "128",
         "--output-len", "128", "--max-num-seqs", "1024", "--kv-cache-dtype", "fp8",
         "--max-num-batched-tokens", "32768", "--no-progress"])
    engine, _ = common.start_engine(model, engine_kwargs(args))
    vocab = engine.model.args.vocab_size
    prompts = common.random_prompts(1000, 128, vocab, args.seed)
    outs = common.output_lens(1000, 128, args.seed)
    workload(engine, [p[:16] for p in prompts[:4]], [4] * 4, "w")
    torch.cuda.synchronize()
    for run in range(2):
        t0 = time.perf_counter()
        steps, host = workload(engine, prompts, outs, f"r{run}-")
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        print(f"timed run {run}: {wall:.3f} s, {1000 * 128 / wall:.0f} output tok/s, {steps} steps, "
              f"host in step() {host:.3f} s")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        steps, host = workload(engine, prompts, outs, "p-")
        torch.cuda.synchronize()
    print(f"profiled run: {time.perf_counter() - t0:.3f} s, {steps} steps")
    rows = []
    for ev in prof.key_averages():
        dev = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if dev > 0:
            rows.append((dev, ev.count, ev.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"GPU kernel time total {total / 1e6:.3f} s over {sum(r[1] for r in rows)} kernels")
    for dev, n, key in rows[:top]:
        print(f"{dev / 1e3:10.1f} ms {n:7d}  {key[:110]}")


if __name__ == "__main__":
    main()
