"""How fast can one launch stream a weight matrix in the GEMVs' access pattern? A read-only probe.

The batch-1 GEMVs reach different shares of the copy bandwidth on the H200 (8B layers,
benchmarks/kernels/sweep_gemv_*_h200.json): the int4 FMA GEMV about 45% on gate_up, the fp8
tensor-core GEMV 80%, the bf16 one 88%. They differ in their instructions per byte, but also in
how many contiguous bytes of a weight row one program asks for per K step: 64 (int4, a group of
128 k), 128 (fp8, BLOCK_K 128) and 256 (bf16, BLOCK_K 128). This probe separates the two: its
kernel reads the same bytes the same way (a program owns BLOCK_N rows and walks its share of the
row's steps, CHUNK bytes of every row per step) and only XORs them together, so what it measures
is the memory system, not the GEMV's arithmetic.

Patterns, at the 8B layer shapes as int4 (K / 2 bytes a row) and fp8 (K bytes a row):
  rows  - row-major [N, row bytes], as the engines store weights today (CHUNK 64 to 1024: how
          long a run of each row a step must read to stream well);
  tiled - the same weights stored as [N / LB, steps, LB, CHUNK]: the LB rows of a block lie
          together per step, so a program's step is one contiguous run of LB x CHUNK bytes
          (LB 16 and 64), the layout a build could write for the GEMV.
Each pattern runs twice: with its loads free to overlap (the compiler unrolls the loop and
hoists them), and with every step's addresses depending on the data of the step before (DEP: one
step in flight per thread, as in a GEMV whose long loop body ptxas does not overlap with the next
step's loads; the int4 GEMV's loop issues its group's loads and then waits on them). Each is timed
at every (BLOCK_N, warps, split, unroll) of a small grid; the best per pattern and shape is
reported as GB/s and its share of the copy bandwidth measured in the same run
(medians of CUDA-graph replays, rotating weight sets so one timing moves > 200 MB, as
sweep_gemv.py times the GEMVs). Every timed launch is checked against a host XOR of the rows.

    PYTHONPATH=. python3 benchmarks/kernels/probe_weight_stream.py --json OUT.json [--quick]

Without CUDA (or with --check-only) it runs the correctness check alone, in Triton's interpreter
(TRITON_INTERPRET=1 is set for you when no GPU is present).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # bench_kernels, bench_quant (CUDA only)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
# (pattern, rows per block LB (1: row-major), CHUNK bytes a row per step)
PATTERNS = [("rows", 1, 64), ("rows", 1, 128), ("rows", 1, 256), ("rows", 1, 512), ("rows", 1, 1024),
            ("tiled", 16, 64), ("tiled", 64, 64), ("tiled", 16, 128)]
# (BLOCK_N, num_warps, UNROLL)
TILES = [(16, 2, 1), (16, 4, 1), (32, 2, 1), (32, 4, 1), (64, 4, 1), (64, 4, 2), (128, 4, 1),
         (128, 8, 2), (256, 8, 1)]
# A program's step holds BLOCK_N x CHUNK bytes in registers: tiles above this are left out
# (a 1 KB chunk runs at 16 rows a program, a 64-byte one at up to 256).
MAX_STEP_BYTES = 16384
SPLITS = [1, 2, 4, 8, 16]
QUICK_TILES = [(16, 4, 1), (32, 4, 1), (64, 4, 1), (128, 4, 1)]
CHECK_TILES = [(16, 2, 1), (32, 2, 1), (64, 4, 2), (128, 4, 1)]  # UNROLL 2 meets the masked tail


def fits(block_n: int, unroll: int, chunk: int) -> bool:
    return block_n * chunk * unroll <= MAX_STEP_BYTES
QUICK_SPLITS = [1, 4, 16]
# 0: loads free to overlap; 1: each step's addresses depend on the step before's data (DEP)
DEPS = [0, 1]


@triton.jit
def _stream_kernel(w_ptr, out_ptr, N, steps, stride_blk, stride_row, stride_step, zero,
                   LB: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr,
                   SPLIT, UNROLL: tl.constexpr, DEP: tl.constexpr):
    # w_ptr: the weights as int64 words. Row n's step s (CH words) starts at word
    # (n // LB) * stride_blk + (n % LB) * stride_row + s * stride_step.
    # DEP: each load's addresses depend on the words the one before it read (their row's maximum
    # ANDed with a run-time 0),
    # so a thread has one step in flight, as in a GEMV whose loop body the compiler cannot
    # overlap with the next step's loads; without DEP the compiler may hoist loads freely.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    base = (rows // LB).to(tl.int64) * stride_blk + (rows % LB) * stride_row
    per = tl.cdiv(steps, SPLIT)
    s_begin = pid_k * per
    s_end = tl.minimum(s_begin + per, steps)
    acc = tl.zeros([BLOCK_N, CH], tl.int64)
    link = tl.zeros([BLOCK_N], tl.int64)
    cols = tl.arange(0, CH)
    for s0 in range(s_begin, s_end, UNROLL):
        for u in tl.static_range(UNROLL):
            s = s0 + u
            offs = base[:, None] + s.to(tl.int64) * stride_step + cols[None, :]
            if DEP:
                offs += link[:, None]
            word = tl.load(w_ptr + offs, mask=(rows < N)[:, None] & (s < s_end), other=0)
            acc = acc ^ word
            if DEP:  # (per row, times 16: the loads stay 16-byte vectors)
                link = tl.max(word & zero, axis=1) * 16
    tl.store(out_ptr + pid_k * N + rows, tl.xor_sum(acc, axis=1), mask=rows < N)


def layout(w: torch.Tensor, lb: int, chunk: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Row-major uint8 weights [N, B] -> (the int64 words of the pattern, its three strides in
    words: block, row within a block, step)."""
    n, nbytes = w.shape
    ch, steps = chunk // 8, nbytes // chunk
    words = w.view(torch.int64).reshape(n, steps, ch)
    if lb == 1:
        return words.reshape(-1), (steps * ch, 0, ch)
    tiled = words.reshape(n // lb, lb, steps, ch).permute(0, 2, 1, 3).contiguous()
    return tiled.reshape(-1), (steps * lb * ch, ch, lb * ch)


def host_xor(w: torch.Tensor) -> torch.Tensor:
    """XOR of each row's int64 words (the probe's answer), on the host."""
    import numpy as np
    a = w.view(torch.int64).cpu().numpy()
    return torch.from_numpy(np.bitwise_xor.reduce(a, axis=1))


def splits_xor(out: torch.Tensor) -> torch.Tensor:
    """The probe's per-row answer from its [split, N] partial XORs."""
    import numpy as np
    return torch.from_numpy(np.bitwise_xor.reduce(out.cpu().numpy(), axis=0))


def launch(flat: torch.Tensor, strides: tuple[int, int, int], n: int, nbytes: int, lb: int,
           chunk: int, block_n: int, warps: int, split: int, unroll: int, dep: int,
           out: torch.Tensor) -> None:
    steps = nbytes // chunk
    grid = (triton.cdiv(n, block_n), split)
    _stream_kernel[grid](flat, out, n, steps, *strides, 0, LB=lb, BLOCK_N=block_n, CH=chunk // 8,
                         SPLIT=split, UNROLL=unroll, DEP=dep, num_warps=warps)


def check(n: int, nbytes: int, device: str, tiles, splits) -> int:
    """Run every pattern and tile once on random rows; count the wrong answers."""
    bad = 0
    w = torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, device=device)
    want = host_xor(w)
    for pattern, lb, chunk in PATTERNS:
        flat, strides = layout(w, lb, chunk)
        for block_n, warps, unroll in tiles:
            if not fits(block_n, unroll, chunk):
                continue
            for split in splits:
                for dep in DEPS:
                    out = torch.zeros(split, n, dtype=torch.int64, device=device)
                    launch(flat, strides, n, nbytes, lb, chunk, block_n, warps, split, unroll,
                           dep, out)
                    if not torch.equal(splits_xor(out), want):
                        bad += 1
                        print(f"WRONG {pattern} LB{lb} C{chunk} BN{block_n} w{warps} U{unroll} "
                              f"split{split} dep{dep}", flush=True)
    return bad


def probe_shape(name: str, n: int, nbytes: int, copy_gbps: float, tiles, splits) -> dict:
    import bench_kernels  # noqa: E402  (this folder: the CUDA-graph timer)
    sets = [torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, device="cuda")
            for _ in range(bench_kernels.n_sets(n * nbytes, cap=16))]
    want = host_xor(sets[0])
    out = {"shape": name, "N": n, "row_bytes": nbytes, "bytes": n * nbytes, "patterns": []}
    for pattern, lb, chunk in PATTERNS:
        laid = [layout(w, lb, chunk) for w in sets]
        for dep in DEPS:
            rows = []
            for block_n, warps, unroll in tiles:
                if not fits(block_n, unroll, chunk):
                    continue
                for split in splits:
                    if split > nbytes // chunk:
                        continue
                    res = torch.zeros(split, n, dtype=torch.int64, device="cuda")
                    calls = [lambda f=f, s=s: launch(f, s, n, nbytes, lb, chunk, block_n, warps,
                                                     split, unroll, dep, res) for f, s in laid]
                    calls[0]()
                    ok = torch.equal(splits_xor(res), want)
                    us = bench_kernels.time_calls(calls, reps=20)
                    rows.append({"BLOCK_N": block_n, "num_warps": warps, "UNROLL": unroll,
                                 "split": split, "us": round(us, 2),
                                 "GBps": round(n * nbytes / us / 1e3, 1), "correct": ok})
            best = min(rows, key=lambda r: r["us"])
            out["patterns"].append({"pattern": pattern, "LB": lb, "chunk": chunk, "dep": dep,
                                    "rows": rows, "best": best})
            print(f"{name:12s} {n * nbytes / 1e6:6.1f} MB {pattern:5s} LB{lb:<3d} C{chunk:<4d} "
                  f"dep{dep} best {best['us']:7.2f} us {best['GBps']:7.0f} GB/s "
                  f"({100 * best['GBps'] / copy_gbps:3.0f}% copy) BN{best['BLOCK_N']} "
                  f"w{best['num_warps']} U{best['UNROLL']} split{best['split']}"
                  + ("" if all(r["correct"] for r in rows) else "  WRONG RESULTS"), flush=True)
        del laid
    del sets
    return out


def _interpreter_numpy_fix() -> None:
    """As tests/kernels/conftest.py does: Triton 3.6's interpreter turns scalars into ints with
    int() on a 1-element array, which numpy >= 2.4 refuses (any range() with a run-time bound)."""
    from triton.runtime import interpreter
    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch_lang_tensor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="a smaller grid of tiles and splits")
    ap.add_argument("--check-only", action="store_true", help="correctness only (small sizes)")
    ap.add_argument("--widths", default="int4,fp8", help="row bytes K / 2 (int4) and/or K (fp8)")
    args = ap.parse_args()
    tiles, splits = (QUICK_TILES, QUICK_SPLITS) if args.quick else (TILES, SPLITS)
    if args.check_only or not torch.cuda.is_available():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            _interpreter_numpy_fix()
        bad = check(128, 1024, device, CHECK_TILES, [1, 3])
        print(f"{'all correct' if not bad else f'{bad} wrong'} ({device})")
        return 1 if bad else 0
    import bench_quant  # noqa: E402  (this folder: the copy-bandwidth ceiling)
    bad = check(256, 2048, "cuda", CHECK_TILES + tiles, [1, 3])
    ceil = bench_quant.ceilings()
    print(f"copy {ceil['copy_GBps']:.0f} GB/s; correctness check: {bad} wrong", flush=True)
    results, t0 = [], time.time()
    for width in args.widths.split(","):
        for name, (n, k) in SHAPES.items():
            nbytes = k // 2 if width == "int4" else k
            res = probe_shape(f"{width}-{name}", n, nbytes, ceil["copy_GBps"], tiles, splits)
            results.append(res)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"ceilings": ceil, "check_wrong": bad, "results": results,
                               "seconds": time.time() - t0,
                               "device": torch.cuda.get_device_name(),
                               "torch": torch.__version__, "triton": triton.__version__},
                              f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
