"""Prototype: the batch-1 GEMVs of a decode step (the 8B decoder's four a layer, then the LM
head) as ONE persistent launch, the phases separated by a grid-wide barrier, against the same
chain launched phase by phase and against the engine's own kernels for the weight kind.

Why: the bf16 tensor-core GEMV's batch-1 times on the H200 fit t = 4.6 us + bytes / 4.235 TB/s
a launch (benchmarks/h200-quant, run-z). The 129 GEMV launches of an 8B step (15.0 GB of bf16
weights) then cost 3.55 ms of streaming and 0.59 ms of per-launch ramp and tail; the bf16 bar
(255 tok/s, 3.92 ms a step) leaves 0.37 ms for everything but the streaming, attention and
norms included. For int4 (about 4 GB) the per-launch share is larger still. A persistent kernel
pays a barrier a phase instead, and loads its first weight tile of the next phase before it
waits (the weights do not depend on the phase before).

The kernel (_chain_kernel): P programs, a table of phases (weight offset, N, K, input offset,
output offset, scales offset). Each phase is a GEMV y = W x over [N, K] (bf16 weights; fp8
W8A8 with A8; int4 weight-only with W4), cut as stream-K: the units (a BLOCK_N x BLOCK_K
weight tile, N tiles x K steps in order) are split into P equal runs, and a program's run is
one loop (copies stay in flight across tile changes, as mma_gemv's FLAT candidates). Whole
tiles are stored; a run's first and last tiles, which other programs may share, are added to
the zero-filled output with atomics after the loop. The input of phase p is the first K outputs
of phase p - 1, read as float32 and rounded to bf16, or for fp8 quantized per unit slice (the
chain only needs a data dependence between phases, not a model's semantics).

Modes timed (medians of CUDA-graph replays):
  persistent - one launch; before each phase but the first, every program arrives at a counter
               in global memory (release) and spins until all P have (acquire). All P programs
               must be resident at once, so P is checked against the compiled kernel's
               occupancy; a wait that spins too long gives up and flags an error, so a mistake
               costs a second, not a hung device.
  nosync     - the same single launch without the barriers: wrong results (not checked), but
               the streaming rate with the phases back to back; persistent - nosync is what the
               barriers cost.
  per_phase  - the same kernel, one launch a phase.
  engine     - the engine's kernel per phase (mma_gemv.tc_gemv; for fp8 after quant_per_token;
               for int4 quant_matmul.int4_wo_linear), autotuned, captured under PDL as the
               decode graphs are.
and the device-to-device copy bandwidth (bench_quant.ceilings), all in the same run. Every
checked mode is compared phase by phase with a float32 product of its own inputs.

    PYTHONPATH=. python benchmarks/kernels/proto_persistent_chain.py [--layers 32] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_persistent_chain.py --check-only   # CPU too
    PYTHONPATH=. python benchmarks/kernels/proto_persistent_chain.py --compile-only # sm_90, no GPU

Without CUDA (or with --check-only) it checks a small chain only, in Triton's interpreter
(TRITON_INTERPRET=1 is set for you when no GPU is present); there the persistent mode runs one
program, since the interpreter runs programs one after another and P > 1 would never meet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kiln.kernels.int4_bits import _int4_words_16  # noqa: E402
from kiln.kernels.qmm_common import _prefetch_rows  # noqa: E402
from kiln.kernels.quant_act import quant_per_token_ref, quantize_to_codes  # noqa: E402
from kiln.quant.int4 import quantize_int4_groupwise, unpack_int4  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # bench_quant, probe_weight_stream

TAB = 6                 # a phase's row of the table: w_off, N, K, x_off, y_off, s_off
MAX_SPIN = 1 << 20      # polls of the barrier counter before a program gives up (about a second)
LAYER = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
LM_HEAD = ("lm_head", 128256, 4096)
# (BLOCK_N, BLOCK_K, warps, stages, programs per SM, EARLY[, L2PRE]), per kind of weights. A
# unit of 64 x 128 bf16 or 64 x 256 fp8 is 16 KB a stage.
VARIANTS = {"bf16": [(64, 128, 4, 4, 1, 0), (64, 128, 4, 4, 1, 1), (64, 128, 4, 6, 1, 1),
                     (64, 128, 4, 4, 2, 1), (64, 64, 4, 6, 2, 1), (64, 64, 4, 8, 2, 1),
                     (128, 64, 4, 4, 2, 1), (64, 128, 8, 6, 1, 1), (64, 128, 8, 6, 1, 2),
                     (64, 128, 4, 4, 1, 1, 8), (64, 128, 8, 6, 1, 2, 8)],
            "fp8": [(64, 256, 4, 4, 1, 1), (64, 256, 4, 6, 1, 1), (64, 256, 4, 4, 2, 1),
                    (64, 128, 4, 6, 2, 1), (64, 128, 4, 8, 2, 1), (64, 256, 8, 6, 1, 2),
                    (128, 128, 4, 4, 2, 1), (64, 128, 4, 6, 2, 1, 8)],
            # int4: BLOCK_K is one group of 128; 64 rows are 4 KB a stage, 256 rows 16 KB
            "int4": [(64, 128, 4, 4, 2, 1), (128, 128, 4, 4, 1, 1), (128, 128, 4, 6, 2, 1),
                     (256, 128, 8, 4, 1, 1), (128, 128, 8, 6, 1, 2), (128, 128, 4, 6, 2, 1, 8)]}
CHECK_VARIANTS = [(16, 32, 4, 2, 1, 0), (16, 32, 4, 2, 1, 1), (32, 64, 4, 2, 1, 1),
                  (16, 32, 4, 2, 1, 2)]
CHECK_SHAPES = [("a", 192, 64), ("b", 64, 128), ("c", 128, 64), ("d", 32, 128)]
# int4: one group of 128 k a unit
CHECK_VARIANTS_INT4 = [(16, 128, 4, 2, 1, 0), (32, 128, 4, 2, 1, 1), (16, 128, 4, 2, 1, 2)]
CHECK_SHAPES_INT4 = [("a", 128, 128), ("b", 256, 128), ("c", 128, 256), ("d", 32, 128)]
CHECKS = {"bf16": (CHECK_VARIANTS, CHECK_SHAPES), "fp8": (CHECK_VARIANTS, CHECK_SHAPES),
          "int4": (CHECK_VARIANTS_INT4, CHECK_SHAPES_INT4)}


@triton.jit
def _grid_sync(bar_ptr, err_ptr, target, MAX_SPIN: tl.constexpr):
    """Every program's stores so far visible to every program after it: arrive at the counter
    (release, after the whole program's stores: bar.sync first) and poll it (acquire) until
    `target` programs have arrived in all. Gives up after MAX_SPIN polls (err = 1), and once
    err is set no later wait spins."""
    tl.debug_barrier()
    seen = tl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu") + 1
    spins = tl.load(err_ptr, volatile=True) * MAX_SPIN
    while (seen < target) & (spins < MAX_SPIN):
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    if seen < target:
        tl.atomic_xchg(err_ptr, 1)
    tl.debug_barrier()


@triton.jit
def _unit(w, x_base, y_base, ws_base, u, tile, steps, u_begin, u_end, first_tile, acc,
          first_done, last_done, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          BLOCK_M: tl.constexpr, A8: tl.constexpr, F32_DOT: tl.constexpr,
          W4: tl.constexpr = False):
    """One unit (weight tile w of K step u - tile * steps) into acc; at the run's last unit of
    the tile, a whole tile is stored and a shared one kept for after the loop. A8: w holds fp8
    codes, and the unit's slice of x is quantized to fp8 with a scale of its own (the engine's
    per-token formula, amax / 448, over BLOCK_K values instead of the row). W4: w holds int4
    words of one group of BLOCK_K = 128 k, dequantized to bf16 in registers (kiln's int4 layout
    and its PTX), times the group's scales (ws_base: [N, K / 128])."""
    rows = tl.arange(0, BLOCK_M)
    offs_k = (u - tile * steps) * BLOCK_K + tl.arange(0, BLOCK_K)
    xf = tl.where(rows[None, :] == 0, tl.load(x_base + offs_k)[:, None], 0.0)
    if A8:
        sx = tl.div_rn(tl.maximum(tl.max(tl.max(tl.abs(xf), axis=1), axis=0), 1e-12), 448.0)
        xq = quantize_to_codes(xf, sx, False)
        if F32_DOT:  # as below: the interpreter's dots of converted operands are not trusted
            part = tl.dot(w.to(tl.float32), xq.to(tl.float32))
        else:
            part = tl.dot(w, xq)
        acc += part * sx
    elif W4:
        q0, q1, q2, q3, q4, q5, q6, q7 = _int4_words_16(w, True, not F32_DOT)
        wq = tl.reshape(tl.join(tl.join(tl.join(q0, q4), tl.join(q2, q6)),
                                tl.join(tl.join(q1, q5), tl.join(q3, q7))), (BLOCK_N, BLOCK_K))
        xt = xf.to(tl.bfloat16)
        if F32_DOT:
            part = tl.dot(wq.to(tl.float32), xt.to(tl.float32))
        else:
            part = tl.dot(wq, xt)
        offs_g = (tile * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64) * steps + (u - tile * steps)
        acc += part * tl.load(ws_base + offs_g)[:, None]
    else:
        xt = xf.to(tl.bfloat16)
        if F32_DOT:  # Triton's interpreter: a dot of loaded and converted bf16 gives garbage there
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc)
        else:
            acc = tl.dot(w, xt, acc)
    if (u == (tile + 1) * steps - 1) | (u == u_end - 1):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        done = acc
        if A8:
            done = acc * tl.load(ws_base + offs_n)[:, None]
        if (tile * steps >= u_begin) & ((tile + 1) * steps <= u_end):
            tl.store(y_base + offs_n[:, None] + rows[None, :] * 0, done,
                     mask=(rows == 0)[None, :])
        elif tile == first_tile:
            first_done = done
        else:
            last_done = done
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    return acc, first_done, last_done


@triton.jit
def _w_tile(w_base, u, steps, K, valid, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            W4: tl.constexpr = False):
    """The weight tile of unit u (tile u // steps, K step u % steps); zeros unless valid. W4:
    int4 weights as 32-bit words of 8 nibbles (w_base an int32 pointer): [BLOCK_N, BLOCK_K / 8]
    words."""
    tile = u // steps
    nn = tl.arange(0, BLOCK_N)
    if W4:
        WK: tl.constexpr = BLOCK_K // 8
        offs = ((tile * BLOCK_N + nn).to(tl.int64)[:, None] * (K // 8)
                + ((u - tile * steps) * WK + tl.arange(0, WK))[None, :])
        w = tl.load(w_base + offs, mask=valid & (nn < BLOCK_N)[:, None], other=0)
    else:
        offs = ((tile * BLOCK_N + nn).to(tl.int64)[:, None] * K
                + ((u - tile * steps) * BLOCK_K + tl.arange(0, BLOCK_K))[None, :])
        w = tl.load(w_base + offs, mask=valid & (nn < BLOCK_N)[:, None], other=0.0)
    return w


@triton.jit
def _add_shared(done, y_base, tile, steps, u_begin, u_end, BLOCK_N: tl.constexpr,
                BLOCK_M: tl.constexpr):
    """Add a tile this run only partly covers to the zero-filled output (atomics)."""
    if (tile * steps < u_begin) | ((tile + 1) * steps > u_end):
        rows = tl.arange(0, BLOCK_M)
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.atomic_add(y_base + offs_n[:, None] + rows[None, :] * 0, done,
                      mask=(rows == 0)[None, :], sem="relaxed")


@triton.jit(do_not_specialize=["ph_begin", "ph_end"])  # one compiled kernel for every phase range
def _chain_kernel(w_ptr, ws_ptr, tab_ptr, y_ptr, bar_ptr, err_ptr, ph_begin, ph_end,
                  SYNC: tl.constexpr, EARLY: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, MAX_SPIN: tl.constexpr,
                  F32_DOT: tl.constexpr = False, A8: tl.constexpr = False,
                  L2PRE: tl.constexpr = 0, W4: tl.constexpr = False):
    # Phases [ph_begin, ph_end) of the table, each a stream-K bf16 GEMV (module docstring);
    # SYNC: a grid barrier before each phase but the first; EARLY (0, 1 or 2): the run's first
    # EARLY weight tiles of a phase are loaded into registers before that barrier. A8: fp8
    # weight codes with per-channel scales at ws_ptr (indexed as the phase's outputs), _unit.
    # L2PRE > 0 (CUDA): before the barrier too, an L2 prefetch of the next L2PRE K steps of the
    # run's first tile after the early ones, so the memory system keeps busy while programs wait.
    # W4: int4 weight-only (w_ptr int32 words, scales [N, K / 128] at ws_ptr + s_off), _unit.
    p = tl.program_id(0)
    P = tl.num_programs(0)
    for ph in range(ph_begin, ph_end):
        row = tab_ptr + ph * 6
        w_base = w_ptr + tl.multiple_of(tl.load(row), 64)
        N = tl.load(row + 1).to(tl.int32)
        K = tl.multiple_of(tl.load(row + 2).to(tl.int32), BLOCK_K)
        x_base = y_ptr + tl.multiple_of(tl.load(row + 3), 16)
        y_off = tl.multiple_of(tl.load(row + 4), 16)
        y_base = y_ptr + y_off
        ws_base = ws_ptr + tl.multiple_of(tl.load(row + 5), 16)
        steps = K // BLOCK_K
        units = (N // BLOCK_N) * steps
        u_begin = (p * units) // P
        u_end = ((p + 1) * units) // P
        first_tile = u_begin // steps
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        first_done = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        last_done = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        # EARLY 1 or 2: the run's first units' weight tiles, loaded before the barrier
        if EARLY >= 1:
            w0 = _w_tile(w_base, u_begin, steps, K, u_begin < u_end, BLOCK_N, BLOCK_K, W4)
        if EARLY >= 2:
            w1 = _w_tile(w_base, u_begin + 1, steps, K, u_begin + 1 < u_end, BLOCK_N, BLOCK_K,
                         W4)
        if L2PRE > 0:
            k_begin = (u_begin + EARLY - first_tile * steps) * BLOCK_K
            k_end = tl.minimum(tl.minimum(k_begin + L2PRE * BLOCK_K, K),
                               (u_end - first_tile * steps) * BLOCK_K)
            offs_n = first_tile * BLOCK_N + tl.arange(0, BLOCK_N)
            ELEMS: tl.constexpr = 8 if W4 else 1  # k a stored element holds
            _prefetch_rows(w_base, offs_n, offs_n < N, K // ELEMS, k_begin // ELEMS,
                           tl.maximum(k_end, k_begin) // ELEMS,
                           w_ptr.dtype.element_ty.primitive_bitwidth // 8)
        if SYNC:
            if ph > ph_begin:
                _grid_sync(bar_ptr, err_ptr, (ph - ph_begin) * P, MAX_SPIN)
        if EARLY >= 1:
            if u_begin < u_end:
                acc, first_done, last_done = _unit(w0, x_base, y_base, ws_base, u_begin, first_tile,
                                                   steps, u_begin, u_end, first_tile, acc,
                                                   first_done, last_done, BLOCK_N, BLOCK_K,
                                                   BLOCK_M, A8, F32_DOT, W4)
        if EARLY >= 2:
            if u_begin + 1 < u_end:
                acc, first_done, last_done = _unit(w1, x_base, y_base, ws_base, u_begin + 1,
                                                   (u_begin + 1) // steps, steps, u_begin, u_end,
                                                   first_tile, acc, first_done, last_done,
                                                   BLOCK_N, BLOCK_K, BLOCK_M, A8, F32_DOT, W4)
        start = tl.minimum(u_begin + EARLY, u_end)
        for u in range(start, u_end):
            tile = u // steps
            w = _w_tile(w_base, u, steps, K, True, BLOCK_N, BLOCK_K, W4)
            acc, first_done, last_done = _unit(w, x_base, y_base, ws_base, u, tile, steps, u_begin,
                                               u_end, first_tile, acc, first_done, last_done,
                                               BLOCK_N, BLOCK_K, BLOCK_M, A8, F32_DOT, W4)
        if u_begin < u_end:
            _add_shared(first_done, y_base, first_tile, steps, u_begin, u_end, BLOCK_N, BLOCK_M)
            last_tile = (u_end - 1) // steps
            if last_tile != first_tile:
                _add_shared(last_done, y_base, last_tile, steps, u_begin, u_end, BLOCK_N,
                            BLOCK_M)


class Chain:
    """The phases' weights in one buffer (bf16; fp8 codes with per-channel scales; or int4 in
    kiln's layout, 32-bit words of nibbles, with group-128 scales), the table, and the float32
    activations (x0 first, then each phase's output)."""

    def __init__(self, shapes: list[tuple[str, int, int]], device: str, seed: int = 0,
                 kind: str = "bf16"):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.shapes = shapes
        self.kind = kind
        per_elem = 8 if kind == "int4" else 1  # k a stored element holds
        rows, w_off, y_off, s_off = [], 0, _align(shapes[0][2], 16), 0
        x_off = 0
        for _, n, k in shapes:
            # scales: fp8 per channel (at the output's offset), int4 per group of 128
            scales_at = s_off if kind == "int4" else y_off
            rows.append([w_off, n, k, x_off, y_off, scales_at])
            s_off += _align(n * k // 128, 16)
            x_off, w_off, y_off = y_off, w_off + _align(n * k // per_elem, 64), y_off + _align(n, 16)
        self.table = torch.tensor(rows, dtype=torch.int64, device=device)
        dtype = {"fp8": torch.float8_e4m3fn, "int4": torch.int32}.get(kind, torch.bfloat16)
        self.w = torch.empty(w_off, dtype=dtype, device=device)
        self.ws = torch.ones(s_off if kind == "int4" else y_off, dtype=torch.float32,
                             device=device)
        for off, n, k, _, _, at in rows:
            w = torch.empty(n, k, dtype=torch.bfloat16, device=device)
            w.normal_(0.0, k ** -0.5, generator=gen)
            if kind == "fp8":
                scale = w.float().abs().amax(dim=1).clamp_min(1e-12) / 448.0
                self.ws[at:at + n] = scale
                w = (w.float() / scale[:, None]).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
            elif kind == "int4":
                packed, scales = quantize_int4_groupwise(w.float(), 128)
                self.ws[at:at + scales.numel()] = scales.reshape(-1)
                w = packed.view(torch.int32)
            self.w[off:off + n * k // per_elem].view(n, k // per_elem).copy_(w)
        self.y = torch.zeros(y_off, dtype=torch.float32, device=device)
        self.x0 = torch.randn(shapes[0][2], generator=gen, device=device)
        self.rows = rows
        self.bar = torch.zeros(1, dtype=torch.int32, device=device)
        self.err = torch.zeros(1, dtype=torch.int32, device=device)

    @property
    def weight_bytes(self) -> int:
        if self.kind == "fp8":  # codes and the float32 per-channel scales
            return sum(n * k + 4 * n for _, n, k in self.shapes)
        if self.kind == "int4":  # nibbles and the float32 group scales
            return sum(n * k // 2 + 4 * n * k // 128 for _, n, k in self.shapes)
        return sum(n * k for _, n, k in self.shapes) * 2

    def weight(self, ph: int) -> torch.Tensor:
        """Phase ph's stored weights: [N, K] bf16 or fp8 codes, or int4 packed uint8 [N, K / 2]."""
        off, n, k = self.rows[ph][:3]
        if self.kind == "int4":
            return self.w[off:off + n * k // 8].view(n, k // 8).view(torch.uint8)
        return self.w[off:off + n * k].view(n, k)

    def w_scales(self, ph: int) -> torch.Tensor:
        """fp8: per-channel scales [N]; int4: group scales [N, K / 128]."""
        n, k, at = self.rows[ph][1], self.rows[ph][2], self.rows[ph][5]
        if self.kind == "int4":
            return self.ws[at:at + n * k // 128].view(n, k // 128)
        return self.ws[at:at + n]

    def reset(self) -> None:
        """Outputs to zero (the shared tiles' atomics add to them), x0 in place, counter to 0."""
        self.y.zero_()
        self.y[:self.x0.numel()].copy_(self.x0)
        self.bar.zero_()

    def launch(self, variant: tuple, programs: int, begin: int, end: int, sync: bool) -> None:
        consts, warps, stages = variant_options(variant)
        opts = dict(num_warps=warps, num_stages=stages) if self.w.is_cuda else {}
        _chain_kernel[(programs,)](self.w, self.ws, self.table, self.y, self.bar, self.err, begin,
                                   end, SYNC=sync, F32_DOT=not self.w.is_cuda,
                                   A8=self.kind == "fp8", W4=self.kind == "int4", **consts,
                                   **opts)

    def check(self, outputs: list[torch.Tensor], group: int = 0) -> float:
        """Worst relative error (norm) of each phase's output against a float32 product of the
        phase's own input (the output before it, first K): rounded to bf16, or for fp8 weights
        quantized to fp8 per `group` values (0: the whole row, as the engine's per-token
        quantization)."""
        worst, x = 0.0, self.x0
        for ph, out in enumerate(outputs):
            out = out.reshape(-1)
            k = self.rows[ph][2]
            if self.kind == "fp8":
                q, sx = quant_per_token_ref(x[:k].float().reshape(-1, group or k),
                                            torch.float8_e4m3fn)
                ref = ((self.weight(ph).float() @ (q.float() * sx).reshape(-1))
                       * self.w_scales(ph))
            elif self.kind == "int4":
                w = unpack_int4(self.weight(ph)).float() * self.w_scales(ph).repeat_interleave(
                    128, dim=1)
                ref = w @ x[:k].float().to(torch.bfloat16).float()
            else:
                ref = self.weight(ph).float() @ x[:k].float().to(torch.bfloat16).float()
            worst = max(worst, ((out.float() - ref).norm() / ref.norm()).item())
            x = out.float()
        return worst

    def outputs(self) -> list[torch.Tensor]:
        return [self.y[row[4]:row[4] + row[1]] for row in self.rows]


def _exact_interpreter_conversions() -> None:
    """Triton 3.6's interpreter converts float32 to bf16 by truncation and to fp8 e4m3 with a
    lost carry (125.7 -> 64; tests/kernels/test_kernel_fp8_kv.py): for the CPU check, these two
    conversions are done by torch instead, rounding to nearest even as the GPU does."""
    import numpy as np
    from triton.runtime import interpreter
    original = interpreter._convert_float
    targets = {tl.float8e4nv: (torch.float8_e4m3fn, torch.uint8),
               tl.bfloat16: (torch.bfloat16, torch.int16)}

    def convert(data, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype in targets:
            dtype, bits = targets[output_dtype]
            src = torch.from_numpy(np.ascontiguousarray(data).view(np.float32))
            return src.to(dtype).view(bits).numpy().reshape(data.shape)
        return original(data, input_dtype, output_dtype, rounding_mode)
    interpreter._convert_float = convert


def variant_options(variant: tuple) -> tuple[dict, int, int]:
    """(constexprs, warps, stages) of a variant (BLOCK_N, BLOCK_K, warps, stages, programs per
    SM, EARLY[, L2PRE])."""
    block_n, block_k, warps, stages, _, early = variant[:6]
    l2pre = variant[6] if len(variant) > 6 else 0
    return (dict(BLOCK_N=block_n, BLOCK_K=block_k, EARLY=early, L2PRE=l2pre, BLOCK_M=16,
                 MAX_SPIN=MAX_SPIN), warps, stages)


def _align(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def fits(chain: Chain, variant: tuple, nphases: int) -> int:
    """How many programs of this variant's single launch (SYNC) an SM holds at once, from the
    kernel compiled for exactly that launch (its registers and shared memory)."""
    consts, warps, stages = variant_options(variant)
    kern = _chain_kernel.warmup(chain.w, chain.ws, chain.table, chain.y, chain.bar, chain.err, 0,
                                nphases, SYNC=True, F32_DOT=False, A8=chain.kind == "fp8",
                                W4=chain.kind == "int4", **consts, num_warps=warps,
                                num_stages=stages, grid=(1,))
    return programs_per_sm(kern, warps, variant)


def programs_per_sm(kern, warps: int, label) -> int:
    """How many programs of a compiled kernel an SM holds at once (registers, shared memory,
    threads), printed with label."""
    kern._init_handles()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    regs_per_warp = _align(kern.n_regs * 32, 256)
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // (regs_per_warp * warps)
    smem = getattr(props, "shared_memory_per_multiprocessor", 233472)
    by_smem = smem // (kern.metadata.shared + 1024)
    by_warps = getattr(props, "max_threads_per_multi_processor", 2048) // (32 * warps)
    fit = min(by_regs, by_smem, by_warps)
    print(f"{label}: {kern.n_regs} registers, {kern.metadata.shared} B shared, "
          f"{kern.n_spills} spills: {fit} programs an SM", flush=True)
    return fit


def compile_only() -> None:
    """Each variant's single-launch kernel compiled for sm_90 without a GPU: registers, spills,
    shared memory (compile_sm90.py's report)."""
    import compile_sm90
    ptrs = {"ws_ptr": "*fp32", "tab_ptr": "*i64", "y_ptr": "*fp32", "bar_ptr": "*i32",
            "err_ptr": "*i32"}
    for kind, variants in VARIANTS.items():
        for variant in variants:
            consts, warps, stages = variant_options(variant)
            w_type = {"fp8": "*fp8e4nv", "int4": "*i32"}.get(kind, "*bf16")
            kern = compile_sm90.compile_one(
                _chain_kernel, {**consts, "SYNC": True, "F32_DOT": False, "A8": kind == "fp8",
                                "W4": kind == "int4", "_ptrs": {**ptrs, "w_ptr": w_type}},
                "bf16", warps, stages)
            print(kind, variant, compile_sm90.resources(kern), flush=True)


def check_setup() -> tuple[str, list[int]]:
    """(device, program counts) of a --check-only run: on the CPU the interpreter made usable
    (numpy >= 2.4, exact conversions); on CUDA every SM too (most runs are then empty)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        from probe_weight_stream import _interpreter_numpy_fix
        _interpreter_numpy_fix()
        _exact_interpreter_conversions()
    programs = [1, 3, 7]
    if device == "cuda":
        programs.append(torch.cuda.get_device_properties(0).multi_processor_count)
    return device, programs


def run_check(device: str, variants: list[tuple], shapes: list[tuple[str, int, int]],
              programs: list[int], kinds: list[str]) -> int:
    """Each variant's per-phase and persistent launches against the float32 products."""
    bad = 0
    for kind, variant in ((kind, v) for kind in kinds for v in variants):
        block_n, block_k = variant[:2]
        chain = Chain(shapes, device, kind=kind)
        assert all(n % block_n == 0 and k % block_k == 0 for _, n, k in shapes)
        for mode in ("per_phase", "persistent"):
            for p in programs:
                if mode == "persistent" and device == "cpu" and p > 1:
                    continue  # the interpreter runs programs in turn: a barrier of P > 1 never meets
                chain.reset()
                if mode == "persistent":
                    chain.launch(variant, p, 0, len(shapes), True)
                else:
                    for ph in range(len(shapes)):
                        chain.launch(variant, p, ph, ph + 1, False)
                err = chain.check(chain.outputs(), block_k)
                ok = err < (2e-3 if device == "cuda" else 1e-5) and chain.err.item() == 0
                bad += not ok
                print(f"  {kind} {mode:<10} {variant} programs {p}: rel err {err:.2e} "
                      f"{'ok' if ok else 'WRONG'}", flush=True)
    return bad


def time_graph(fn, reps: int) -> float:
    """Median ms of a CUDA-graph replay of fn (captured after one eager call)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def engine_chain(chain: Chain, row_block: int = 1) -> tuple:
    """The chain through the engine's kernels, phase by phase (bf16 in and out): tc_gemv, after
    quant_per_token for fp8 weights (per-token fp8 codes of x, as the engine's W8A8 layers), or
    the int4 weight-only dispatcher (the FMA GEMV, autotuned; row_block > 1: on a copy of the
    weights in blocks of that many rows, int4_bits.tile_int4_rows, as the engine stores them)."""
    from kiln.kernels import mma_gemv
    from kiln.kernels.int4_bits import tile_int4_rows
    from kiln.kernels.quant_act import quant_per_token
    from kiln.kernels.quant_matmul import int4_wo_linear
    int4_w = [chain.weight(ph) if row_block == 1 else tile_int4_rows(chain.weight(ph), row_block, 128)
              for ph in range(len(chain.rows))] if chain.kind == "int4" else []
    outs: list[torch.Tensor] = []
    x0 = chain.x0.to(torch.bfloat16)[None, :]

    def run() -> None:
        outs.clear()
        x = x0
        for ph, row in enumerate(chain.rows):
            k = row[2]
            if chain.kind == "fp8":
                xq, sx = quant_per_token(x[:, :k], torch.float8_e4m3fn)
                out = mma_gemv.tc_gemv(xq, sx, chain.weight(ph), chain.w_scales(ph), None,
                                       torch.bfloat16)
            elif chain.kind == "int4":
                out = int4_wo_linear(x[:, :k], int4_w[ph], chain.w_scales(ph), 128,
                                     row_block=row_block)
            else:
                out = mma_gemv.tc_gemv(x[:, :k], None, chain.weight(ph), None, None,
                                       torch.bfloat16)
            outs.append(out)
            x = out
    return run, outs


def bench_kind(kind: str, shapes: list, reps: int, copy: float, record) -> None:
    """Every mode of the module docstring for one kind of weights, recorded with record(kind,
    mode, variant, ms, GB, phases, err, note)."""
    from kiln.kernels import pdl_scope
    chain = Chain(shapes, "cuda", kind=kind)
    gb = chain.weight_bytes / 1e9
    nphases = len(shapes)
    print(f"{kind}: {nphases} phases, {gb:.2f} GB of weights: {gb / copy * 1e3:.3f} ms at the "
          f"copy rate", flush=True)
    sms = torch.cuda.get_device_properties(chain.w.device).multi_processor_count

    def rec(mode, variant, ms, err, note=""):
        record(kind, mode, variant, ms, gb, nphases, err, note)

    # the engine's kernels first (their autotuning happens in the eager call before capture)
    run, outs = engine_chain(chain)
    with pdl_scope(True):
        ms = time_graph(run, reps)
    label = {"fp8": "quant_per_token + tc_gemv (autotuned, PDL)",
             "int4": "int4_wo_linear (autotuned, PDL)"}.get(kind, "tc_gemv (autotuned, PDL)")
    rec("engine", label, ms, chain.check(outs, 0))
    for variant in VARIANTS[kind]:
        per_sm, group = variant[4], variant[1]
        try:
            room = fits(chain, variant, nphases)
        except Exception as exc:  # a variant that does not compile is reported, not fatal
            print(f"{variant}: does not compile: {str(exc).splitlines()[0][:200]}", flush=True)
            continue
        programs = sms * per_sm

        def per_phase() -> None:
            chain.reset()
            for ph in range(nphases):
                chain.launch(variant, programs, ph, ph + 1, False)
        ms = time_graph(per_phase, reps)
        rec("per_phase", variant, ms, chain.check(chain.outputs(), group))
        if room < per_sm:
            print(f"{variant}: {room} programs fit an SM, not {per_sm}: no single launch",
                  flush=True)
            continue

        def one_launch(sync: bool):
            def fn() -> None:
                chain.reset()
                chain.launch(variant, programs, 0, nphases, sync)
            return fn
        chain.err.zero_()
        ms = time_graph(one_launch(True), reps)
        timed_out = chain.err.item() != 0
        rec("persistent", variant, ms, chain.check(chain.outputs(), group),
            "BARRIER TIMED OUT" if timed_out else "")
        if timed_out:
            continue
        ms = time_graph(one_launch(False), reps)
        rec("nosync", variant, ms, None, "results race: not checked")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--no-lm-head", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--weights", default="bf16,fp8,int4",
                    help="bf16, fp8 (W8A8: fp8 codes, per-channel scales; the prototype "
                         "quantizes x per BLOCK_K values, the engine per token) and/or int4 "
                         "(weight-only, group 128, x bf16)")
    ap.add_argument("--variants", help="a Python list of variant tuples to time instead of "
                                       "VARIANTS[kind] (one --weights kind)")
    ap.add_argument("--json")
    ap.add_argument("--check-only", action="store_true", help="correctness only (small chain)")
    ap.add_argument("--compile-only", action="store_true",
                    help="compile the variants for sm_90 and report their resources (no GPU needed)")
    args = ap.parse_args()
    if args.compile_only:
        compile_only()
        return 0
    if args.check_only or not torch.cuda.is_available():
        device, programs = check_setup()
        bad = sum(run_check(device, *CHECKS[kind], programs, [kind])
                  for kind in args.weights.split(","))
        print(f"{'all correct' if not bad else f'{bad} wrong'} ({device})")
        return 1 if bad else 0

    import bench_quant
    shapes = LAYER * args.layers + ([] if args.no_lm_head else [LM_HEAD])
    t0 = time.time()
    ceil = bench_quant.ceilings()
    copy = ceil["copy_GBps"]
    print(f"copy {copy:.0f} GB/s", flush=True)
    results = []

    def record(kind, mode, variant, ms, gb, nphases, err, note) -> None:
        over = (ms - gb / copy * 1e3) / nphases * 1e3
        results.append({"weights": kind, "mode": mode, "variant": variant, "ms": ms,
                        "weight_GB": gb, "phases": nphases, "GBps": gb / ms * 1e3,
                        "of_copy": gb / ms * 1e3 / copy, "over_copy_us_per_phase": over,
                        "rel_err": err, "note": note})
        print(f"{kind:<4} {mode:<10} {str(variant):<26} {ms:7.3f} ms  {gb / ms * 1e3:6.0f} GB/s "
              f"({gb / ms * 1e3 / copy:6.1%} of copy)  +{over:5.2f} us/phase  "
              f"err {err if err is None else f'{err:.1e}'} {note}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ceilings": ceil, "layers": args.layers,
                           "lm_head": not args.no_lm_head, "results": results,
                           "seconds": time.time() - t0, "device": torch.cuda.get_device_name(),
                           "torch": torch.__version__, "triton": triton.__version__}, f,
                          indent=1)

    if args.variants:
        import ast
        VARIANTS[args.weights] = [tuple(v) for v in ast.literal_eval(args.variants)]
    for kind in args.weights.split(","):
        bench_kind(kind, shapes, args.reps, copy, record)
        torch.cuda.empty_cache()  # the kind's weights went with bench_kind's frame
    return 0


if __name__ == "__main__":
    sys.exit(main())
