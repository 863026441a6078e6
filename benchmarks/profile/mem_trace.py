"""Where GPU memory goes during an engine workload: allocated bytes per step, and on an
out-of-memory error (or at the end) the live allocations made after start-up, grouped by the
innermost kiln source line that made them.

    python benchmarks/profile/mem_trace.py --model DIR --num-prompts 1000 --input-len 128 \
        --output-len 128 --max-num-seqs 1024
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.profile.profile_engine import workload_args  # noqa: E402
from kiln.bench import common  # noqa: E402
from kiln.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402

GIB = 1 << 30


def live_allocations_by_site(top: int) -> None:
    """Print the live blocks recorded since start-up, summed by their innermost kiln frame."""
    snap = torch.cuda.memory._snapshot()
    sites: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for seg in snap["segments"]:
        for block in seg["blocks"]:
            if block["state"] != "active_allocated":
                continue
            frames = block.get("frames") or []
            site = "(no trace: allocated before recording)"
            if frames:
                kiln_frames = [f for f in frames if "/kiln/" in f["filename"]]
                f = (kiln_frames or frames)[0]
                site = f"{f['filename'].split('/kiln/')[-1]}:{f['line']} {f['name']}"
            sites[site][0] += block["size"]
            sites[site][1] += 1
    for site, (size, count) in sorted(sites.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {size / GIB:8.3f} GiB  {count:6d} blocks  {site}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_args(p, num_prompts=1000, output_len=128, max_num_seqs=1024)
    p.add_argument("--every", type=int, default=8, help="print allocated memory every N steps")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()

    engine, startup = common.start_engine(args.model, dict(
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_dtype=args.kv_cache_dtype))
    dev = engine.device
    print(f"started in {startup:.1f} s; allocated {torch.cuda.memory_allocated(dev) / GIB:.2f} GiB, "
          f"reserved {torch.cuda.memory_reserved(dev) / GIB:.2f} GiB, "
          f"KV blocks {engine.stats().get('num_total_kv_blocks')}")
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    prompts = common.random_prompts(args.num_prompts, args.input_len, engine.model.args.vocab_size, 0)
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": ids}, params)
    step, peak = 0, 0
    base = torch.cuda.memory_allocated(dev)
    try:
        while engine.has_unfinished_requests():
            engine.step()
            step += 1
            now = torch.cuda.memory_allocated(dev)
            peak = max(peak, now)
            if step % args.every == 0:
                s = engine.stats()
                print(f"step {step:4d}  running {s.get('num_running')}  allocated "
                      f"{now / GIB:7.2f} GiB (+{(now - base) / GIB:.2f} since start-up)  "
                      f"max {torch.cuda.max_memory_allocated(dev) / GIB:7.2f} GiB")
        print(f"finished after {step} steps; peak sampled {peak / GIB:.2f} GiB")
    except torch.OutOfMemoryError as e:
        print(f"OUT OF MEMORY at step {step}: {str(e).splitlines()[0]}")
    print("live allocations made after start-up, by site:")
    live_allocations_by_site(args.top)


if __name__ == "__main__":
    main()
