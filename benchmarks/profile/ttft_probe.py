"""Where a short prompt's time to first token goes: the host's launch of the prefill against the
device's work, per request, in one process.

`kiln bench latency` at 128 tokens reads TTFTs from 29 to 51 ms between processes on one H200
(benchmarks/h200-quant/h200-2026-12-07j), where an 8B fp8 prefill of 128 tokens reads about
7.5 GB of weights (under 2 ms at the copy bandwidth). This script times --iters single requests
of --input-len random tokens and max_tokens 1 through LLMEngine.step(), one after another, and
splits each into:
  - launch: the host's time in ModelRunner.launch (scheduling excluded), which queues the
    prefill's kernels one by one from Python, or replays the piecewise prefill graphs between
    eager attention launches (kiln/runner/prefill_graphs.py; KILN_PREFILL_GRAPHS=0: eager);
  - span (CUDA): the device's time from the first launch to the output, idle gaps included;
  - total: from add_request to the output (the TTFT a user sees).
Each request is preceded by a fixed pure-Python loop (cpu_control: is the CPU itself slow at that
moment?); the Python threads of the process are listed, and --sample samples the main thread's
stack every 0.5 ms during the launches. The kernel times of one more request, under
torch.profiler, are summed. Median, minimum and maximum of each, and every iteration in --json.

    python benchmarks/profile/ttft_probe.py --model DIR --input-len 128 --iters 20 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kiln.bench import common  # noqa: E402
from kiln.sampling_params import SamplingParams  # noqa: E402


def summary(xs: list[float]) -> dict:
    """Median, minimum and maximum of a list of milliseconds."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def cpu_control_ms() -> float:
    """A fixed pure-Python workload's time: whether the host CPU itself is slow at that moment."""
    t = time.perf_counter()
    acc = 0
    for i in range(100_000):
        acc += i & 7
    return 1e3 * (time.perf_counter() - t)


class StackSampler:
    """Samples the main thread's Python stack every ``interval`` seconds from a helper thread,
    while ``active`` is set: the innermost frame, and the innermost frame in kiln's own code, of
    each sample. The helper needs the GIL to read the frames; while the main thread runs Python
    it gets it once per switch interval (Python's default 5 ms), so start() sets that interval
    to ``interval``, which adds a GIL hand-over to the main thread's work at that rate."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.active = threading.Event()
        self.stop = threading.Event()
        self.main = threading.main_thread().ident
        self.inner: Counter[str] = Counter()
        self.kiln: Counter[str] = Counter()
        self.samples = 0
        self.thread = threading.Thread(target=self._run, name="ttft-probe-sampler", daemon=True)

    def start(self) -> None:
        sys.setswitchinterval(self.interval)
        self.thread.start()

    @staticmethod
    def _where(frame) -> str:
        code = frame.f_code
        return f"{os.path.basename(code.co_filename)}:{code.co_name}:{frame.f_lineno}"

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.active.wait(0.05):
                frame = sys._current_frames().get(self.main)
                if frame is not None:
                    self.samples += 1
                    self.inner[self._where(frame)] += 1
                    f = frame
                    while f is not None and "/kiln/" not in f.f_code.co_filename:
                        f = f.f_back
                    self.kiln[self._where(f) if f is not None else "(outside kiln)"] += 1
                time.sleep(self.interval)

    def report(self, top: int = 25) -> dict:
        n = max(1, self.samples)
        return {"samples": self.samples, "interval_s": self.interval,
                "innermost": [[k, v, v / n] for k, v in self.inner.most_common(top)],
                "innermost_kiln": [[k, v, v / n] for k, v in self.kiln.most_common(top)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the last, profiled request (kernel time of one prefill)")
    p.add_argument("--sample", action="store_true",
                   help="sample the main thread's stack every 0.5 ms during the requests' launches")
    p.add_argument("--label", default="")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    kwargs = dict(kv_cache_dtype=args.kv_cache_dtype, enforce_eager=args.enforce_eager)
    engine, startup = common.start_engine(args.model, kwargs)
    runner, device = engine.runner, engine.device
    cuda = device.type == "cuda"
    timing: dict[str, float] = {}
    launch_inner = runner.launch

    def timed_launch(out):
        t = time.perf_counter()
        start = torch.cuda.Event(enable_timing=True) if cuda else None
        if start is not None:
            start.record()
        res = launch_inner(out)
        timing["launch"] = timing.get("launch", 0.0) + time.perf_counter() - t
        if start is not None and not out.is_empty and "start_event" not in timing:
            timing["start_event"] = start
        return res

    sampler = StackSampler() if args.sample else None
    if sampler is not None:
        sampler.start()

    def sampled_launch(out):
        sampler.active.set()
        try:
            return timed_launch(out)
        finally:
            sampler.active.clear()

    runner.launch = timed_launch if sampler is None else sampled_launch
    threads = sorted(t.name for t in threading.enumerate())
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    vocab = engine.model.args.vocab_size
    rows = []
    for it in range(args.warmup + args.iters):
        ids = common.random_prompts(1, args.input_len, vocab, 1000 + it)[0]
        timing.clear()
        common.sync(device)
        control = cpu_control_ms()
        t0 = time.perf_counter()
        engine.add_request(f"p{it}", {"prompt_token_ids": ids}, params)
        done = False
        while not done:
            for out in engine.step():
                done = done or out.finished
        total = time.perf_counter() - t0
        end = torch.cuda.Event(enable_timing=True) if cuda else None
        device_ms = None
        if end is not None and "start_event" in timing:
            end.record()
            end.synchronize()
            # Device time from the start of the first launch to now: the prefill's kernels,
            # plus any idle time the host left between them.
            device_ms = timing["start_event"].elapsed_time(end)
        if it >= args.warmup:
            rows.append({"total_ms": 1e3 * total, "launch_ms": 1e3 * timing.get("launch", 0.0),
                         "span_ms": device_ms, "cpu_control_ms": control})
    runner.launch = launch_inner  # the profiled request is neither timed nor sampled
    kernel_ms = None
    if not args.no_profile:
        # One more request under the profiler: the summed time of its kernels (on a CPU, of its
        # aten ops), the device's own work with the host's gaps left out.
        acts = [torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU]
        ids = common.random_prompts(1, args.input_len, vocab, 999)[0]
        common.sync(device)
        with torch.profiler.profile(activities=acts) as prof:
            engine.add_request("profiled", {"prompt_token_ids": ids}, params)
            while engine.has_unfinished_requests():
                engine.step()
            common.sync(device)
        if cuda:
            kernel_ms = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
        else:
            kernel_ms = sum(e.self_cpu_time_total for e in prof.key_averages()
                            if e.key.startswith("aten::")) / 1e3
    out = {"label": args.label, "model": args.model, "input_len": args.input_len,
           "iters": args.iters, "startup_seconds": startup,
           "cuda_graphs": runner.graphs is not None, "async_scheduling": engine.async_scheduling,
           "total_ms": summary([r["total_ms"] for r in rows]),
           "launch_ms": summary([r["launch_ms"] for r in rows]),
           "cpu_control_ms": summary([r["cpu_control_ms"] for r in rows]),
           "python_threads": threads, "os_threads": len(os.listdir("/proc/self/task"))
           if os.path.isdir("/proc/self/task") else None,
           "kernel_ms_one_request": kernel_ms, "iterations": rows,
           "environment": common.environment(device)}
    if rows[0]["span_ms"] is not None:
        out["span_ms"] = summary([r["span_ms"] for r in rows])
    print(f"== {args.label or args.model}: {args.input_len}-token prompt, {args.iters} requests, "
          f"max_tokens 1")
    if sampler is not None:
        sampler.stop.set()
        out["stack_samples"] = sampler.report()
    for key in ("total_ms", "launch_ms", "span_ms", "cpu_control_ms"):
        if key in out:
            s = out[key]
            print(f"  {key[:-3]:11s} median {s['median']:7.2f} ms   min {s['min']:7.2f}   "
                  f"max {s['max']:7.2f}")
    print(f"  threads: {out['os_threads']} in the process; Python's: {', '.join(threads)}")
    if sampler is not None:
        rep = out["stack_samples"]
        print(f"  {rep['samples']} stack samples; innermost frames, then innermost kiln frames:")
        for key in ("innermost", "innermost_kiln"):
            for where, _, share in rep[key][:12]:
                print(f"    {100 * share:5.1f}%  {where}")
    if kernel_ms is not None:
        print(f"  kernels     {kernel_ms:7.2f} ms in one profiled request (summed)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
