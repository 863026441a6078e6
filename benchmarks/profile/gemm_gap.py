"""Why the large-batch decode GEMMs run slower in the engine than alone, measured in one process.

At 1000 x 128/128 the decode steps' cuBLAS GEMMs took about 24.1 ms a step in the engine's profile
(`../h200-engine/run-f`), against about 20.3 ms for the same shapes timed alone
(`../kernels/gemm_tunable_h200.csv`). Two explanations predict different things:
- clocks: a long run at full tensor-core load draws the card to its power limit and the SM clock
  drops, so every kernel slows alike; then a sustained chain of the same GEMMs with nothing else
  slows as much as the engine does, and the sampled SM clock falls during it;
- the engine: something of its own (inputs' layout, attention between GEMMs, another cuBLAS
  kernel for the same shape) slows them; then the sustained chain keeps the short bursts' speed.

Phases, on one card, with the SM clock, power and throttle reasons sampled every 100 ms
(nvidia-smi) and tagged with the phase that was running:
1. `engine`: the workload, timed (as `kiln bench throughput`), then N decode steps at the full
   batch profiled (kernels by name);
2. `burst`: each decode GEMM shape (M = the batch's rows) alone, 20 warm-up and 50 timed calls;
3. `chain`: the step's GEMMs (32 layers of qkv, o_proj, gate_up, down, then the LM head) back to
   back for --sustain-s seconds, step time by CUDA events, the last steps profiled by kernel name.

    python benchmarks/profile/gemm_gap.py --model DIR --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.profile.phases import drive  # noqa: E402
from benchmarks.profile.profile_engine import group_of, kernel_table, workload_args  # noqa: E402
from kiln.bench import clocks as gpu_clocks  # noqa: E402
from kiln.bench import common  # noqa: E402
from kiln.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402


class ClockLog(gpu_clocks.ClockSampler):
    """nvidia-smi sampling the first GPU every 100 ms (`kiln.bench.clocks`); phases marked by wall
    time, those named idle-* left out."""

    def __init__(self) -> None:
        super().__init__("0")

    def mark(self, phase: str) -> None:
        super().mark(phase)
        print(f"-- {phase}", flush=True)

    def close(self) -> dict:
        """{phase: {samples, sm_mhz mean/min/max, power_w mean/max, clock-event reasons seen}}."""
        closed = super().close()
        return {k: v for k, v in closed["phases"].items() if v} if closed else {}


def gemm_kernels(prof, steps: int) -> dict[str, dict]:
    """{kernel name: {calls a step, us a call, ms a step}} of the GEMM group of a profile."""
    out = {}
    for name, (calls, ms) in kernel_table(prof, True).items():
        if group_of(name) == "gemm":
            out[name] = {"calls_per_step": calls / steps, "us_per_call": 1e3 * ms / max(1, calls),
                         "ms_per_step": ms / steps}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms_per_step"]))


def shapes_of(cfg) -> dict[str, tuple[int, int]]:
    """(N, K) of the decode GEMMs of one layer and of the LM head."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    return {"qkv": (qkv, h), "o_proj": (h, cfg.num_attention_heads * cfg.head_dim), "gate_up": (2 * inter, h),
            "down": (h, inter), "lm_head": (cfg.vocab_size, h)}


def timed(fn, reps: int) -> float:
    """ms a call, CUDA events around reps calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def run_engine(args, clocks: ClockLog, out: dict) -> tuple[int, object]:
    engine, startup = common.start_engine(args.model, dict(
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens))
    cfg = engine.model.args
    out["startup_seconds"] = startup
    out["environment"] = common.environment(engine.device)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    prompts = common.random_prompts(args.num_prompts, args.input_len, cfg.vocab_size, 7)
    clocks.mark("engine-run")
    sec, _ = drive(engine, prompts, params, "t")
    out["engine_run"] = {"seconds": sec, "output_tok_s": args.num_prompts * args.output_len / sec}
    print(f"engine: {sec:.3f} s, {out['engine_run']['output_tok_s']:.0f} output tok/s", flush=True)

    # Decode steps at the full batch, profiled: other prompts (no prefix-cache hits), step until
    # every prompt is in, a few steps more, then the profiled ones.
    clocks.mark("idle-1")
    prompts = common.random_prompts(args.num_prompts, args.input_len, cfg.vocab_size, 1007)
    for i, ids in enumerate(prompts):
        engine.add_request(f"p-{i}", {"prompt_token_ids": ids}, params)
    for _ in range(args.num_prompts * args.input_len // args.max_num_batched_tokens + 8):
        engine.step()
    clocks.mark("engine-decode-profiled")
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.decode_steps):
            engine.step()
        torch.cuda.synchronize()
        sec = time.perf_counter() - t0
    clocks.mark("idle-2")
    rows = len(engine.scheduler.running)
    kernels = kernel_table(prof, True)
    busy = sum(ms for _, ms in kernels.values()) / args.decode_steps
    gemm = gemm_kernels(prof, args.decode_steps)
    out["engine_decode"] = {"rows": rows, "steps": args.decode_steps,
                            "wall_ms_per_step": 1e3 * sec / args.decode_steps,
                            "gpu_busy_ms_per_step": busy,
                            "gemm_ms_per_step": sum(r["ms_per_step"] for r in gemm.values()),
                            "gemm_kernels": gemm}
    print(f"engine decode at {rows} rows: {out['engine_decode']['wall_ms_per_step']:.2f} ms a step "
          f"(profiled), GEMMs {out['engine_decode']['gemm_ms_per_step']:.2f} ms", flush=True)
    while engine.has_unfinished_requests():
        engine.step()
    return rows, cfg


def run_alone(args, cfg, rows: int, clocks: ClockLog, out: dict) -> None:
    dev, dt = torch.device("cuda"), torch.bfloat16
    shapes = shapes_of(cfg)
    w = {k: torch.randn(n, kk, device=dev, dtype=dt) * 0.02 for k, (n, kk) in shapes.items()}
    x = {k: torch.randn(rows, kk, device=dev, dtype=dt) for k, (_, kk) in shapes.items()}
    clocks.mark("burst")
    burst = {}
    for k in shapes:
        fn = (lambda k=k: F.linear(x[k], w[k]))
        timed(fn, 20)
        ms = timed(fn, 50)
        n, kk = shapes[k]
        burst[k] = {"rows": rows, "n": n, "k": kk, "us": 1e3 * ms, "tflops": 2 * rows * n * kk / ms / 1e9}
        print(f"burst {k:8s} {1e3 * ms:8.1f} us  {burst[k]['tflops']:.0f} TFLOP/s", flush=True)
    layers = cfg.num_hidden_layers
    burst_step = sum(burst[k]["us"] for k in ("qkv", "o_proj", "gate_up", "down")) * layers
    burst_step = (burst_step + burst["lm_head"]["us"]) / 1e3
    out["burst"] = {"shapes": burst, "step_ms": burst_step}

    def step() -> None:
        for _ in range(layers):
            for k in ("qkv", "o_proj", "gate_up", "down"):
                F.linear(x[k], w[k])
        F.linear(x["lm_head"], w["lm_head"])

    clocks.mark("chain")
    step_ms = []
    t_end = time.perf_counter() + args.sustain_s
    while time.perf_counter() < t_end:
        step_ms.append(timed(step, 1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    clocks.mark("idle-3")
    q = max(1, len(step_ms) // 4)
    gemm = gemm_kernels(prof, 3)
    out["chain"] = {"steps": len(step_ms), "first_quarter_ms": sum(step_ms[:q]) / q,
                    "last_quarter_ms": sum(step_ms[-q:]) / q, "gemm_kernels": gemm}
    print(f"chain: {len(step_ms)} steps, {out['chain']['first_quarter_ms']:.2f} ms a step in the first "
          f"quarter, {out['chain']['last_quarter_ms']:.2f} in the last; bursts summed "
          f"{burst_step:.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_args(p, num_prompts=1000, output_len=128, max_num_seqs=1024)
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--sustain-s", type=float, default=6.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.max_num_batched_tokens == 8192:  # workload_args' default; the bar's runs use 32768
        args.max_num_batched_tokens = 32768
    clocks = ClockLog()
    out: dict = {"model": args.model, "num_prompts": args.num_prompts, "input_len": args.input_len,
                 "output_len": args.output_len, "max_num_seqs": args.max_num_seqs,
                 "max_num_batched_tokens": args.max_num_batched_tokens}
    try:
        rows, cfg = run_engine(args, clocks, out)
        common.free_device_memory(torch.device("cuda"))
        run_alone(args, cfg, rows, clocks, out)
    finally:
        out["clocks"] = clocks.close()
    for phase, r in out["clocks"].items():
        print(f"clocks {phase:24s} {r['samples']:4d} samples, {gpu_clocks.describe(r, clocks.limits)}")
    e, c = out["engine_decode"], out["chain"]
    print("GEMM kernels, us a call: engine | chain")
    for name, r in list(e["gemm_kernels"].items())[:8]:
        other = c["gemm_kernels"].get(name, {}).get("us_per_call", float("nan"))
        print(f"  {r['calls_per_step']:5.0f}x {r['us_per_call']:8.1f} | {other:8.1f}  {name[:90]}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
