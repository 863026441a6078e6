"""Shared pieces of the offline benchmarks: workloads, device facts, JSON output."""

from __future__ import annotations

import json
import os
import platform
import random
import re
import time
from pathlib import Path

import torch

from kiln.bench import cost


def random_prompts(n: int, input_len: int, vocab_size: int, seed: int,
                   range_ratio: float = 0.0) -> list[list[int]]:
    """n prompts of random token ids; lengths uniform in input_len * [1 - r, 1 + r]."""
    rng = random.Random(seed)
    lo = max(1, int(input_len * (1 - range_ratio)))
    hi = max(lo, int(input_len * (1 + range_ratio)))
    # Stay clear of the lowest ids, where tokenizers keep their special tokens.
    return [[rng.randrange(10, vocab_size) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def output_lens(n: int, output_len: int, seed: int, range_ratio: float = 0.0) -> list[int]:
    """n output lengths uniform in output_len * [1 - r, 1 + r]."""
    rng = random.Random(seed + 1)
    lo = max(1, int(output_len * (1 - range_ratio)))
    hi = max(lo, int(output_len * (1 + range_ratio)))
    return [rng.randint(lo, hi) for _ in range(n)]


def load_jsonl_dataset(path: str, tokenizer, limit: int | None) -> tuple[list[list[int]], list[int]]:
    """Prompts and output lengths from a JSONL file: each line has "prompt" (or
    "prompt_token_ids") and "output_len" (or "max_tokens")."""
    from kiln.errors import KilnError

    prompts, outs = [], []
    p = Path(path)
    if not p.is_file():
        raise KilnError(f"dataset file {path} not found")
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ids = rec.get("prompt_token_ids") or tokenizer.encode(rec["prompt"])
            n = int(rec.get("output_len") or rec.get("max_tokens"))
        except (ValueError, KeyError, TypeError) as e:
            raise KilnError(f"{path}:{i + 1}: needs 'prompt' and 'output_len' ({e})") from None
        prompts.append(list(ids))
        outs.append(n)
        if limit and len(prompts) >= limit:
            break
    return prompts, outs


def sync(device: torch.device) -> None:
    """Wait for queued device work, so host clocks measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Measured device-to-device copy bandwidth (bytes read + written per second), in GB/s."""
    if device.type != "cuda":
        return None
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * nbytes / times[len(times) // 2] / 1e9


_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASS", re.IGNORECASE)


def environment(device: torch.device) -> dict:
    """Facts about where the numbers were taken."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           # The runtime switches set for this run (kernel choices, A/B settings); never a
           # credential such as KILN_API_KEY.
           "kiln_env": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith("KILN_") and not _SECRET.search(k)}}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def engine_settings(engine) -> dict:
    """The engine knobs a measurement depends on, recorded beside it."""
    c = engine.config
    return {"max_num_seqs": c.scheduler.max_num_seqs,
            "max_num_batched_tokens": c.scheduler.max_num_batched_tokens,
            "max_model_len": c.scheduler.max_model_len, "dtype": str(engine.dtype).replace("torch.", ""),
            "kv_cache_dtype": c.cache.kv_cache_dtype, "enforce_eager": c.enforce_eager,
            "async_scheduling": c.async_scheduling,
            # token counts of the captured prefill graphs ([] when none were captured)
            "prefill_graph_sizes": getattr(getattr(getattr(engine, "runner", None), "prefill_graphs",
                                                   None), "buckets", []),
            "quantization": ((engine.engine_info or {}).get("quantization") or {}).get("scheme", "none"),
            # the engine's packed Triton kernels put into this machine's cache at load (if any)
            "packed_kernels": (engine.engine_info or {}).get("kernel_cache_install")}


def packed_kernels_note(settings: dict | None) -> str:
    """", 41 packed kernels installed (12 already cached)" after the start-up time, or ""."""
    packed = (settings or {}).get("packed_kernels") or {}
    if not packed.get("installed") and not packed.get("present"):
        return ""
    note = (f", {packed.get('installed', 0)} packed kernels installed "
            f"({packed.get('present', 0)} already cached")
    built = packed.get("launchers") or {}
    if built:
        note += (f"; {built.get('built', 0)} launchers compiled here in {built.get('seconds', 0):.1f} s"
                 " in the background")
    elif packed.get("launchers_building"):
        note += f"; {packed['launchers_building']} launchers compiling here"
    elif packed.get("host_code_skipped"):
        note += f"; {packed['host_code_skipped']} launchers left to compile, KILN_ENGINE_KERNELS=all"
    return note + ")"


def write_json(path: str | None, result: dict) -> None:
    """Write results as JSON when a path was given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def start_engine(model: str | None, engine_kwargs: dict):
    """(engine, seconds it took to load, profile and capture)."""
    from kiln.engine.llm_engine import LLMEngine

    t0 = time.perf_counter()
    engine = LLMEngine.from_args(model, **engine_kwargs)
    return engine, time.perf_counter() - t0


def free_device_memory(device: torch.device) -> None:
    """After the last reference to an engine is dropped: collect it and return its GPU memory,
    so that a baseline model can load in the same process."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_footer(r: dict, baseline_line) -> None:
    """The end of an offline bench's printout: the start-up, kiln's cost, and with a baseline its
    line (baseline_line(r["baseline"])) and its cost."""
    print(f"  startup (load + profile + graphs) {r['startup_seconds']:.1f} s"
          + packed_kernels_note(r.get("engine")))
    if r.get("cost"):
        print("  " + cost.describe(r["cost"]))
    if "baseline" in r:
        print("  " + baseline_line(r["baseline"]))
        if r["baseline"].get("cost"):
            print("    " + cost.describe(r["baseline"]["cost"]))
