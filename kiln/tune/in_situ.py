"""Choose the decode GEMVs' launch configurations by the time of whole decode steps.

The GEMV autotuners time each candidate configuration alone, one launch after another. Inside a
captured decode step, under programmatic dependent launch, a kernel timed alone is not the kernel
the step waits for: on the H200 an engine tuned with a better per-kernel timer decoded no faster
(benchmarks/h200-quant, run-k), and adding stream-K candidates that won little alone made an int4
engine 14% faster (run-m). This tuner times the step itself.

A *slot* is one tuned GEMV launch the decode step makes: (autotuned kernel name, its tuning key).
`coordinate_descent` tries every candidate of one slot with the others fixed, keeps the fastest
step, moves to the next slot, and repeats for a number of rounds. The CUDA side (`slots_of`,
`set_configs`, `graph_step_ms`) records the slots of a decode forward, installs an assignment in
the autotuners' caches and times CUDA-graph replays of the step. `tune_decode_step` runs the whole
search on a started engine; `store_choices` writes its result into engine.json's kernel_tuning
record. `kiln build` runs it on the target GPU (--step-tuning-batch-sizes); the stand-alone driver
is `benchmarks/kernels/tune_in_situ.py`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Hashable, Sequence

import torch

Slot = tuple[str, tuple]

# The decode GEMVs' autotuned kernels (kiln.kernels.quant_matmul.tuned_kernels names).
GEMV_KERNELS = ("gemv", "tc_gemv")


def coordinate_descent(slots: Sequence[Hashable], candidates: dict, start: dict,
                       measure: Callable[[dict], float], rounds: int = 1,
                       min_gain: float = 0.0, same: Callable = lambda a, b: a is b):
    """Minimise measure(assignment) one slot at a time.

    slots: the order to visit; candidates[slot]: the configurations to try there; start: the
    first assignment (slot -> configuration); measure: the cost of an assignment (an exception
    marks a candidate as unusable, it is skipped); a candidate replaces the current one only if
    it is faster by more than min_gain (a fraction), so that noise does not pick. Stops after
    `rounds` passes or a pass without change. Returns (assignment, its cost, trace), the trace a
    list of {"slot", "config", "cost"} (cost None and "error" for a failed trial), the first
    entry the start.
    """
    current = dict(start)
    best = measure(current)
    trace = [{"slot": None, "config": None, "cost": best}]
    for _ in range(rounds):
        changed = False
        for slot in slots:
            for cand in candidates[slot]:
                if same(cand, current[slot]):
                    continue
                trial = {**current, slot: cand}
                try:
                    cost = measure(trial)
                except Exception as exc:  # a candidate that cannot launch here is skipped
                    trace.append({"slot": slot, "config": cand, "cost": None, "error": str(exc)})
                    continue
                trace.append({"slot": slot, "config": cand, "cost": cost})
                if cost < best * (1.0 - min_gain):
                    current, best, changed = trial, cost, True
        if not changed:
            break
    return current, best, trace


def same_config(a, b) -> bool:
    """Two triton.Config objects that launch the same way."""
    from kiln.kernels import quant_matmul as qm

    return qm._same_config(a, qm.config_json(b))


class _Recorder(dict):
    """A tuning cache that remembers which keys were read."""

    def __init__(self, data, seen: list, name: str):
        super().__init__(data)
        self._seen, self._name = seen, name

    def __getitem__(self, key):
        if (self._name, key) not in self._seen:
            self._seen.append((self._name, key))
        return super().__getitem__(key)


def slots_of(forward: Callable[[], object], kernels: dict) -> list[Slot]:
    """The (kernel name, tuning key) slots that forward() reads from the autotuners' caches,
    in first-use order (kernels: name -> autotuner, e.g. quant_matmul.tuned_kernels())."""
    seen: list[Slot] = []
    saved = {name: k.cache for name, k in kernels.items()}
    try:
        for name, k in kernels.items():
            k.cache = _Recorder(k.cache, seen, name)
        forward()
    finally:
        for name, k in kernels.items():
            k.cache = dict(k.cache) if isinstance(k.cache, _Recorder) else saved[name]
    return seen


def slot_candidates(kernel, key: tuple, configs: list) -> list:
    """The configurations the autotuner would weigh for this key: its pruning applied to
    configs, with the key's values as the named arguments."""
    prune = getattr(kernel, "early_config_prune", None)
    named = dict(zip(getattr(kernel, "keys", ()), key))
    if prune is None or not named:
        return list(configs)
    try:
        return list(prune(list(configs), named, **named))
    except KeyError:  # a key shorter than the kernel's names: every candidate is tried (one
        return list(configs)  # that cannot launch fails its trial and is skipped)


def set_configs(kernels: dict, assignment: dict) -> None:
    """Install an assignment (slot -> triton.Config) in the autotuners' caches."""
    for (name, key), cfg in assignment.items():
        kernels[name].cache[key] = cfg


def graph_step_ms(runner, batch: int, context: int, max_model_len: int, reps: int = 50,
                  windows: int = 5, batch1_ring: bool = False) -> float:
    """Median time in ms of one replay of a freshly captured decode graph for `batch` sequences
    of `context` tokens each (CUDA; batch1_ring as DecodeGraphs takes it). The rows read
    distinct cache blocks; the graph is dropped afterwards."""
    g = decode_graphs(runner, batch, context, max_model_len, batch1_ring)
    g.capture()
    graph = g.graphs[batch]
    per_window = []
    for _ in range(windows):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        per_window.append(start.elapsed_time(end) / reps)
    del g, graph
    return sorted(per_window)[len(per_window) // 2]


def decode_graphs(runner, batch: int, context: int, max_model_len: int, batch1_ring: bool = False):
    """A DecodeGraphs of the runner's model and caches for `batch` sequences, not yet captured,
    its inputs those of a decode step at `context` tokens per sequence (_fill_inputs)."""
    from kiln.runner.cuda_graphs import DecodeGraphs

    g = DecodeGraphs(runner.model, runner.kv_caches, batch, max_model_len, runner.block_size,
                     runner.device, sizes=[batch], batch1_ring=batch1_ring)
    _fill_inputs(g, batch, context, runner.block_size, runner.num_kv_blocks)
    return g


def _fill_inputs(g, batch: int, context: int, block_size: int, num_blocks: int) -> None:
    """A decode step's inputs in a DecodeGraphs' buffers: each row at position context - 1,
    reading its own run of cache blocks and writing its new token into the last one."""
    per_row = math.ceil(context / block_size)
    if per_row > g.max_blocks:
        raise ValueError(f"context {context} exceeds the graphs' {g.max_blocks} blocks per row")
    tables = torch.arange(batch * per_row, device=g.block_tables.device).view(batch, per_row)
    tables = tables % num_blocks
    g.block_tables[:batch].zero_()
    g.block_tables[:batch, :per_row] = tables.to(torch.int32)
    g.seq_lens[:batch] = context
    g.positions[:batch] = context - 1
    g.slot_mapping[:batch] = tables[:, -1] * block_size + (context - 1) % block_size
    if getattr(g, "staged", None) is not None:  # what the graph's first kernel spreads (step_inputs)
        g.staged[:batch, 0] = 0
        g.staged[:batch, 1] = g.positions[:batch]
        g.staged[:batch, 2] = g.slot_mapping[:batch]
        g.staged[:batch, 3] = g.seq_lens[:batch].to(torch.int64)
        g.staged[:batch, 4] = -1


def config_json(cfg) -> dict:
    """A triton.Config as engine.json stores a tuning choice (quant_matmul.config_json)."""
    from kiln.kernels import quant_matmul as qm

    return qm.config_json(cfg)


def median(xs: Sequence[float]) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(xs)[len(xs) // 2]


def tune_decode_step(engine, batch_size: int = 1, context: int = 256, reps: int = 50,
                     windows: int = 5, rounds: int = 1, min_gain: float = 0.002, confirm: int = 3,
                     log: Callable[[str], Any] = print) -> tuple[dict, dict]:
    """Choose the decode GEMVs' configurations of a started engine (CUDA) by the time of its
    captured decode step at `batch_size` rows of `context` tokens.

    Records the tuned GEMV launches of one decode forward, runs coordinate descent over their
    candidates (the autotuners' own, pruned as they would be), then re-times the engine's own
    choices and the chosen ones `confirm` times, alternating, so that the reported gain is not
    the minimum of many noisy trials. The choices stay installed in the autotuners' caches.
    Returns (assignment slot -> triton.Config, record); the assignment is empty when the step
    launches no tuned GEMV (every product on cuBLAS)."""
    from kiln.kernels import PDL_MAX_BATCH, pdl_scope
    from kiln.kernels import quant_matmul as qm

    started = time.perf_counter()
    runner = engine.runner
    max_len = engine.max_model_len
    kernels = {n: k for n, k in qm.tuned_kernels().items() if n in GEMV_KERNELS}
    probe = decode_graphs(runner, batch_size, context, max_len)  # never captured

    def forward():
        with torch.inference_mode(), pdl_scope(batch_size <= PDL_MAX_BATCH):
            probe._forward(batch_size)
        torch.cuda.synchronize()

    forward()  # anything not yet tuned is tuned here, outside the recording
    slots = slots_of(forward, kernels)
    probe = None  # its buffers go; forward is not called again
    record: dict[str, Any] = {"batch_size": batch_size, "context": context, "reps": reps,
                              "windows": windows, "rounds": rounds, "min_gain": min_gain,
                              "slots": len(slots)}
    if not slots:
        record.update(trials=0, changed=[], trace=[], reason="the decode step launches no tuned GEMV",
                      seconds=round(time.perf_counter() - started, 2))
        return {}, record
    start = {s: kernels[s[0]].cache[s[1]] for s in slots}
    cands = {s: slot_candidates(kernels[s[0]], s[1], qm._candidates(s[0])) for s in slots}
    log(f"batch {batch_size}: {len(slots)} GEMV slots, {sum(len(c) for c in cands.values())} candidates")

    def measure(assign):
        set_configs(kernels, assign)
        return graph_step_ms(runner, batch_size, context, max_len, reps, windows)

    best, _, trace = coordinate_descent(slots, cands, start, measure, rounds, min_gain, same_config)
    before, after = [], []
    for _ in range(confirm):
        before.append(measure(start))
        after.append(measure(best))
    if median(after) >= median(before):  # the search's gain did not hold up: keep the engine's
        best = dict(start)
        after = list(before)
    set_configs(kernels, best)
    log(f"batch {batch_size}: step {median(before):.4f} -> {median(after):.4f} ms "
        f"(confirm runs {[round(x, 4) for x in before]} / {[round(x, 4) for x in after]})")
    if batch_size == 1 and ring_may_apply(runner.model):
        record["batch1_ring"] = choose_batch1_ring(
            lambda ring: graph_step_ms(runner, batch_size, context, max_len, reps, windows, ring),
            confirm, min_gain, log)
    changed = []
    for s in slots:
        if not same_config(start[s], best[s]):
            changed.append({"kernel": s[0], "key": list(s[1]), "from": config_json(start[s]),
                            "to": config_json(best[s])})
            log(f"  {s[0]} {s[1][:4]}: {config_json(start[s])} -> {config_json(best[s])}")
    record.update(trials=len(trace) - 1, step_ms_before=before, step_ms_after=after,
                  changed=changed,
                  trace=[{"kernel": t["slot"][0] if t["slot"] else None,
                          "key": list(t["slot"][1]) if t["slot"] else None,
                          **(config_json(t["config"]) if t["config"] is not None else {}),
                          "ms": t["cost"], **({"error": t["error"]} if "error" in t else {})}
                         for t in trace],
                  seconds=round(time.perf_counter() - started, 2))
    return best, record


def ring_may_apply(model: torch.nn.Module) -> bool:
    """Whether a batch-1 decode step of `model` could take the ring GEMV somewhere: the batch-1
    ring is not forced either way by the environment (KILN_RING_GEMV, KILN_PDL_TRIGGER), the
    device is sm_90 or later, and some float16/bfloat16 matrix has a ring configuration."""
    import os

    from kiln.kernels.ring_gemv import ring_config

    if os.environ.get("KILN_RING_GEMV") is not None or os.environ.get("KILN_PDL_TRIGGER") is not None:
        return False
    params = [p for p in model.parameters() if p.dim() == 2 and p.is_cuda and p.is_contiguous()
              and p.dtype in (torch.float16, torch.bfloat16)]
    if not params or torch.cuda.get_device_capability(params[0].device)[0] < 9:
        return False
    return any(ring_config(*p.shape) is not None for p in params)


def choose_batch1_ring(step_ms: Callable[[bool], float], confirm: int = 3, min_gain: float = 0.002,
                       log: Callable[[str], Any] = print) -> dict:
    """Time the batch-1 decode step (step_ms(ring): one measurement of a freshly captured graph,
    on the ring path or not; kiln.kernels.batch1_ring_scope) `confirm` times each way,
    alternating; the ring is chosen only if its median is faster by more than min_gain (a
    fraction). Returns {"chosen": "ring" | "tc", "ms_tc": [...], "ms_ring": [...]}, with
    "error" where the ring path failed (then "tc")."""
    off, on = [], []
    try:
        for _ in range(confirm):
            off.append(step_ms(False))
            on.append(step_ms(True))
    except Exception as exc:  # the ring cannot run here: keep the tensor-core path
        log(f"batch 1: the ring path failed ({type(exc).__name__}: {exc}); keeping the tensor-core GEMV")
        return {"chosen": "tc", "ms_tc": off, "ms_ring": on, "error": f"{type(exc).__name__}: {exc}"}
    ring = median(on) < median(off) * (1.0 - min_gain)
    log(f"batch 1: ring path {median(off):.4f} -> {median(on):.4f} ms "
        f"({'chosen' if ring else 'not chosen'}; runs {[round(x, 4) for x in off]} / "
        f"{[round(x, 4) for x in on]})")
    return {"chosen": "ring" if ring else "tc", "ms_tc": off, "ms_ring": on}


def store_choices(tuning: dict, best: dict, record: dict) -> dict:
    """engine.json's kernel_tuning record with a decode-step tuning's choices in its results
    (replacing the entries of the same kernel and key, which loading would otherwise seed) and
    the run summarised under "in_situ" (one entry per batch size, the latest kept, in batch size
    order), and the batch-1 path's choice (batch1_gemv) where the record has one."""
    if tuning.get("status") != "tuned":
        raise ValueError(f"no stored kernel tuning to update (status {tuning.get('status')!r})")
    entries = [e for e in tuning.get("results", []) if (e["kernel"], tuple(e["key"])) not in best]
    for (name, key), cfg in best.items():
        entries.append({"kernel": name, "key": list(key), **config_json(cfg)})
    summary = {k: record[k] for k in ("batch_size", "context", "rounds", "min_gain", "slots",
                                      "trials", "step_ms_before", "step_ms_after", "seconds")
               if k in record}
    summary["changed"] = len(record.get("changed", []))
    previous = tuning.get("in_situ")  # a list; the first stand-alone runs wrote one dict
    runs = [r for r in previous if r.get("batch_size") != record["batch_size"]] \
        if isinstance(previous, list) else []
    out = {**tuning, "results": entries,
           "in_situ": sorted(runs + [summary], key=lambda r: r["batch_size"])}
    if "batch1_ring" in record:  # the batch-1 path, which the engine applies to its batch-1 graph
        summary["batch1_ring"] = record["batch1_ring"]
        out["batch1_gemv"] = record["batch1_ring"]["chosen"]
    return out
