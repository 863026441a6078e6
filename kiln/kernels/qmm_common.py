"""What the quantized matmul kernels (fma_gemv, quant_gemm, mma_gemv) share: the weight kinds,
the raw weight tile loads, K splits (split-K and stream-K grids, float32 partials summed by the
last program to arrive or by _splitk_reduce_kernel), the L2 prefetch option, and the launch
helper that runs a kernel autotuned or with one fixed configuration."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kiln.kernels.int4_bits import _int4_rows
from kiln.kernels.pdl import pdl_start, prefetch_l2


# Weight kinds (constexpr WKIND in the kernels).
W_INT4 = 0     # packed uint8 nibbles, group-wise scales
W_INT8_U = 1   # int8 weights viewed as uint8 (dequantized with the bias trick below)
W_FP8 = 2      # float8_e4m3fn weights
W_INT8 = 3     # raw int8 weights for an int8 x int8 tl.dot (W8A8 GEMM)
W_FLOAT = 4    # unquantized bf16/fp16/fp32 weights (the GEMV only: a cuBLAS alternative)

GEMV_MAX_M = 4          # rows up to which the FMA GEMV kernel runs (above: tl.dot kernels)
SMALL_M = 16            # M up to which the tl.dot kernel may split K; fp8 uses it below _scaled_mm
KTILE_8BIT = 128        # K tile of the int8/fp8 kernels (int4 tiles are the scale group)


@triton.jit
def _load_weight(w_ptr, offs_n, g, stride_wn, K, n_mask, valid,
                 GROUP: tl.constexpr, WKIND: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """Raw weight tile of K-group g: [BLOCK_N, GROUP // 2] bytes for int4, else [BLOCK_N, GROUP].
    ROW_BLOCK > 1 (int4): the rows are stored in blocks (_int4_rows)."""
    if WKIND == 0 and ROW_BLOCK > 1:
        offs_b = g * (ROW_BLOCK * (GROUP // 2)) + tl.arange(0, GROUP // 2)
        rows = w_ptr + _int4_rows(offs_n, stride_wn, GROUP, ROW_BLOCK)[:, None]
        return tl.load(rows + offs_b[None, :], mask=n_mask[:, None] & valid, other=0.0)
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    if WKIND == 0:
        offs_b = g * (GROUP // 2) + tl.arange(0, GROUP // 2)
        tile = tl.load(rows + offs_b[None, :], mask=n_mask[:, None] & valid, other=0.0)
    else:
        offs_k = g * GROUP + tl.arange(0, GROUP)
        tile = tl.load(rows + offs_k[None, :], mask=n_mask[:, None] & (offs_k < K)[None, :] & valid,
                       other=0.0)
    return tile


@triton.jit
def _finish_tile(acc, rows2, cols2, mask, out_ptr, part_ptr, lock_ptr, bias_ptr, tile, pid_k, M, N,
                 stride_om, SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SPLITK: tl.constexpr):
    """Store one program's float32 tile acc of out[rows2, cols2] (row and column indices
    broadcast to acc's shape, either orientation). Unsplit: with the bias, in out's dtype.
    Split: as split pid_k's partial; with FUSED_SPLITK the last of the tile's SPLIT_K programs to
    arrive sums the partials in split order (the additions of _splitk_reduce_kernel, so the same
    bits) and re-arms the tile's counter lock_ptr[tile] for the next launch: no second kernel."""
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols2, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows2 * stride_om + cols2, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + (pid_k * M + rows2) * N + cols2, acc, mask=mask)
        if FUSED_SPLITK:
            tl.debug_barrier()  # every thread's partial stores precede the release below
            arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:
                tl.debug_barrier()
                total = tl.zeros_like(acc)
                for sk in range(0, SPLIT_K):
                    total += tl.load(part_ptr + (sk * M + rows2) * N + cols2, mask=mask, other=0.0,
                                     cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + cols2, mask=mask, other=0.0).to(tl.float32)
                tl.store(out_ptr + rows2 * stride_om + cols2, total.to(out_ptr.dtype.element_ty),
                         mask=mask)
                tl.atomic_xchg(lock_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def _prefetch_rows(w_ptr, offs_n, n_mask, stride_wn, k_begin, k_end, ELEM_BYTES: tl.constexpr):
    """L2 prefetch of elements [k_begin, k_end) of weight rows offs_n (where n_mask), one bulk
    prefetch per row (rows 16-byte aligned, the range a multiple of 16 bytes)."""
    addr = (w_ptr + offs_n.to(tl.int64) * stride_wn + k_begin).to(tl.int64, bitcast=True)
    nbytes = (k_end - k_begin) * ELEM_BYTES
    prefetch_l2(addr, tl.zeros_like(offs_n) + nbytes, n_mask & (nbytes > 0))


@triton.jit
def _prefetch_budget(PREFETCH: tl.constexpr, PREFETCH_MB: tl.constexpr, step_bytes):
    """K steps one program prefetches: PREFETCH, or fewer so that the launch's programs together
    ask for at most PREFETCH_MB MiB (when > 0) of step_bytes each per step."""
    if PREFETCH_MB > 0:
        programs = tl.num_programs(0) * tl.num_programs(1)
        return tl.minimum(PREFETCH, (PREFETCH_MB * 1048576) // (programs * step_bytes))
    else:
        return PREFETCH


@triton.jit
def _split_range(steps, SPLIT_K, pid_k):
    """The K steps [begin, end) of split pid_k when `steps` are cut into SPLIT_K equal runs."""
    per_split = tl.cdiv(steps, SPLIT_K)
    begin = pid_k * per_split
    return begin, tl.minimum(begin + per_split, steps)


@triton.jit
def _few_rows_tile(M, N, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Program (N tile, K split) of a kernel for a few rows: (pid_n, pid_k, output columns and
    their mask, the BLOCK_M rows and their mask)."""
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    return pid_n, tl.program_id(1), offs_n, offs_n < N, rows, rows < M


@triton.jit
def _stream_k_owner(unit, P, U):
    """The program whose run holds unit `unit` when U units are cut into P runs, run p being
    [p * U // P, (p + 1) * U // P)."""
    return ((unit + 1) * P - 1) // U


@triton.jit
def _stream_k_run(N, steps, BLOCK_N: tl.constexpr):
    """This program's run of a stream-K launch over cdiv(N, BLOCK_N) tiles of `steps` K steps:
    (p, P, units, first unit, end unit)."""
    p = tl.program_id(0)
    P = tl.num_programs(0)
    units = tl.cdiv(N, BLOCK_N) * steps
    return p, P, units, (p * units) // P, ((p + 1) * units) // P


@triton.jit
def _stream_k_contributor(tile, steps, p, P, units, FUSED_SPLITK: tl.constexpr):
    """(this program's number among the tile's contributors, their count) for _finish_tile: the
    programs whose runs meet the tile, in program order. Without FUSED_SPLITK the count is
    unbounded, so that every tile, whole ones too, leaves its partials for the separate reduce."""
    first = _stream_k_owner(tile * steps, P, units)
    contributors = _stream_k_owner((tile + 1) * steps - 1, P, units) - first + 1
    if not FUSED_SPLITK:
        contributors = 0x7FFFFFFF
    return p - first, contributors


@triton.jit
def _bytes_f32(b, WKIND: tl.constexpr):
    """int8 (given as uint8 bits), fp8 or float tile -> float32."""
    if WKIND == 2 or WKIND == 4:
        return b.to(tl.float32)
    else:
        u = b.to(tl.int32)
        # u ^ 0x80 = q + 128 in [0, 255]; the same bias trick as for nibbles.
        return ((u ^ 0x80) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _splitk_reduce_kernel(p_ptr, bias_ptr, out_ptr, M, N, stride_om,
                          SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                          PDL: tl.constexpr = False):
    # Fixed summation order, so split-K results are deterministic (no atomics).
    pdl_start(PDL)
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(p_ptr + (s * M + row) * N + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _cfg(num_warps: int, num_stages: int, **kw) -> triton.Config:
    return triton.Config(kw, num_warps=num_warps, num_stages=num_stages)


MAX_SPLIT_K = 16


def pick_split_k(tiles: int, num_groups: int, num_sms: int) -> int:
    """K splits so that layers with few output tiles still get about two programs per SM.

    Doubles while the grid is under 2 programs per SM and each split keeps at least 4 K-groups.
    """
    split = 1
    while split < MAX_SPLIT_K and tiles * split < 2 * num_sms and num_groups >= 8 * split:
        split *= 2
    return split


def split_for(m: int, n: int, k: int, group: int, num_sms: int, hint: int, block_n: int,
              block_m: int | None, cfg_split: int = 0) -> int:
    """SPLIT_K of one launch, from the tile sizes of the configuration being run.

    hint > 0 forces a split (benchmarks); rows above SMALL_M never split (no partial buffer is
    allocated for them). block_m is None for the GEMV (all rows in one tile). cfg_split > 0 is
    the configuration's own split (GEMV split_cfg), at most one per K group.
    """
    if hint > 0:
        return hint
    if m > SMALL_M:
        return 1
    if cfg_split > 0:
        return max(1, min(cfg_split, MAX_SPLIT_K, triton.cdiv(k, group)))
    tiles = triton.cdiv(n, block_n) * (1 if block_m is None else triton.cdiv(m, block_m))
    return pick_split_k(tiles, triton.cdiv(k, group), num_sms)


def _split_heuristic(args: dict) -> int:
    return split_for(args["M"], args["N"], args["K"], args["GROUP"], args["num_sms"],
                     args["split_hint"], args["BLOCK_N"], args["BLOCK_M"] if "SWIZZLE" in args else None,
                     int(args.get("split_cfg") or 0))


def stream_k_grid(tiles: int, steps: int, num_sms: int, per_sm: int,
                  longest: int = 0) -> tuple[int, int]:
    """(programs, most contributors of one tile) of a stream-K launch over tiles x steps units:
    per_sm programs per SM (at most one per unit), more where runs would exceed `longest` units
    (when > 0)."""
    units = tiles * steps
    programs = min(units, num_sms * per_sm)
    if longest > 0:
        programs = max(programs, triton.cdiv(units, longest))
    # every run holds at least units // programs units, so a tile meets at most this many runs
    return programs, triton.cdiv(steps - 1, max(1, units // programs)) + 1


_TUNE_KEY = ["N", "K", "WKIND", "A8", "GROUP", "split_hint", "HAS_BIAS"]


def autotune_enabled() -> bool:
    """Autotune on CUDA unless KILN_QUANT_AUTOTUNE=0 (then the default configs: fast start-up)."""
    return os.environ.get("KILN_QUANT_AUTOTUNE", "1") != "0"


def fused_splitk_enabled() -> bool:
    """Whether the GEMV sums its own K splits (the default) instead of launching
    _splitk_reduce_kernel after it (KILN_QUANT_FUSED_SPLITK=0). On the H200 the fused reduce took
    8B fp8 batch-1 decode from 228.5 to 265.4 tok/s (benchmarks/h200-quant/)."""
    return os.environ.get("KILN_QUANT_FUSED_SPLITK", "1") == "1"


SPLIT_LOCKS = 16384  # per-device arrival counters, one per GEMV output tile
_split_locks: dict[torch.device, torch.Tensor] = {}


def prefetch_steps(w: torch.Tensor, step_bytes: int, pdl: dict) -> dict:
    """The GEMVs' PREFETCH launch argument: KILN_GEMV_PREFETCH K steps (tc_gemv) or groups
    (_gemv_kernel) of each program's weight rows are asked into L2 before the kernel waits for
    the one before it, at most KILN_GEMV_PREFETCH_MB MiB over the launch when that is set. Only
    under PDL (otherwise nothing runs before that kernel ends), and only
    where every prefetched row range is 16-byte aligned (the bulk prefetch's rule): the weight's
    address, its row stride, one step's bytes (step_bytes) and its row's bytes."""
    steps = int(os.environ.get("KILN_GEMV_PREFETCH", "0"))
    if steps <= 0 or not pdl.get("PDL"):
        return {}
    row_bytes = w.shape[1] * w.element_size()
    if (w.data_ptr() % 16 or (w.stride(0) * w.element_size()) % 16 or step_bytes % 16
            or row_bytes % 16):
        return {}
    budget = int(os.environ.get("KILN_GEMV_PREFETCH_MB", "0"))
    return {"PREFETCH": steps, **({"PREFETCH_MB": budget} if budget > 0 else {})}


def early_groups(pdl: dict) -> dict:
    """The FMA GEMV's EARLY launch argument: with KILN_GEMV_EARLY_GROUP=1 each program loads its
    first K group's weights and scales into registers before it waits for the kernel before it
    (fma_gemv._gemv_kernel), so that under PDL that load overlaps the end of the kernel before;
    the same bits. Only under PDL (otherwise nothing runs before that kernel ends). Off by
    default: 8B int4-wo batch 1 gained on an H100 at this tree (414.7 -> 419.3 tok/s, weights
    in row blocks, int4 LM head; benchmarks/head/README.md) but lost on an H200 at an older one
    (382.4 -> 374.0, row-major weights; benchmarks/h200-quant/README.md, run-q)."""
    flag = os.environ.get("KILN_GEMV_EARLY_GROUP", "0")
    if flag not in ("0", "1"):
        raise ValueError(f"KILN_GEMV_EARLY_GROUP={flag!r}: expected 0 or 1")
    return {"EARLY": 1} if flag == "1" and pdl.get("PDL") else {}


def split_locks(device: torch.device) -> torch.Tensor | None:
    """The device's zeroed arrival counters (allocated on first use outside graph capture; None
    while capturing before they exist, and the caller then reduces with a separate kernel).
    Shared by the GEMVs' fused split-K and decode attention's fused merge: kernels of one
    stream touch them only after waiting for the kernel before, and re-arm every counter they
    use before they end."""
    locks = _split_locks.get(device)
    if locks is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        locks = _split_locks[device] = torch.zeros(SPLIT_LOCKS, dtype=torch.int32, device=device)
    return locks


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: small, so the CPU tests reach the split-K path
    return torch.cuda.get_device_properties(device).multi_processor_count


def _run(kernel, grid, args: tuple, flags: dict, fixed: triton.Config, tune: bool,
         x2: torch.Tensor, pdl: dict) -> None:
    """Launch kernel (autotuned when tune, else with the fixed configuration, its register cap
    included; the interpreter takes no warps, stages or cap)."""
    if tune:
        kernel[grid](*args, **flags, **pdl)
    elif x2.is_cuda:
        kernel[grid](*args, **flags, **fixed.kwargs, num_warps=fixed.num_warps,
                     num_stages=fixed.num_stages,
                     **({"maxnreg": fixed.maxnreg} if fixed.maxnreg else {}), **pdl)
    else:
        kernel[grid](*args, **flags, **fixed.kwargs)


def _partials(max_split: int, m: int, n: int, out: torch.Tensor, zeroed: bool) -> torch.Tensor:
    """The float32 buffer of up to max_split K-split partials of an [m, n] output (out itself,
    unused, when nothing is split). zeroed: stream-K without the fused reduce leaves no partial
    in the slots of a tile's missing contributors, which must then read as zeros to the reduce."""
    if max_split <= 1:
        return out
    return (torch.zeros if zeroed else torch.empty)(max_split * m * n, dtype=torch.float32,
                                                    device=out.device)


def _reduce_splits(part: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, split: int,
                   pdl: dict) -> None:
    """Sum split's float32 partials [split, M, N] (+ bias) into out with _splitk_reduce_kernel."""
    m, n = out.shape
    block = min(1024, triton.next_power_of_2(n))
    _splitk_reduce_kernel[(m, triton.cdiv(n, block))](
        part, bias if bias is not None else out, out, m, n, out.stride(0),
        SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4, **pdl)
