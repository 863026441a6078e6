"""Row-wise argmax of logits: the token a greedy step takes.

torch's argmax reduces a row with one thread block, which at batch 1 leaves the GPU nearly idle:
on the H200 a [1, 128256] bf16 row took 36.9 us per step. Here the row is cut into chunks read by
many programs at once; each writes its chunk's (maximum, first index of it) to a small per-device
workspace, and the last program of the row to arrive combines the partials (one launch, no
second kernel). The result is exactly torch's: the first index of the maximum, NaN counted as
larger than everything (the first NaN wins), index 0 for a row of -inf.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start

NUM_WARPS = 8
# One loop step of a program reads 16 bytes per thread, a single 16-byte load each: with two per
# thread, the sm_90 code issued the second only after the first one's data had been used.
PROGRAMS_PER_SM = 4  # rows x chunks aimed at per SM; a row is split only while rows are fewer
MAX_PROGRAMS_PER_SM = 8  # what the workspace is sized for (benchmarks may aim higher than default)
PART_BLOCK = 128  # partials the combining program reads per step
_INT32_MAX = 2**31 - 1


def block_for(dtype: torch.dtype, num_warps: int = NUM_WARPS) -> int:
    """Elements a program reads per loop step: 16 bytes for each of its threads."""
    return 16 * 32 * num_warps // dtype.itemsize


def argmax_ref(logits: torch.Tensor) -> torch.Tensor:
    """Reference: ``logits.argmax(dim=-1)`` (int64, first index of the maximum, NaN largest)."""
    return logits.argmax(dim=-1)


@triton.jit
def _first_max(vals, idx):
    """(maximum, smallest index holding it) over a vector of candidates, NaN above everything
    (all NaNs equal), so the smallest index of a NaN wins when there is one."""
    is_nan = vals != vals
    any_nan = tl.max(is_nan.to(tl.int32), axis=0) > 0
    top = tl.max(tl.where(is_nan, float("-inf"), vals), axis=0)
    hit = tl.where(any_nan, is_nan, vals == top)
    first = tl.min(tl.where(hit, idx, 2147483647), axis=0)
    return tl.where(any_nan, float("nan"), top), first


@triton.jit(do_not_specialize=["chunk_blocks", "splits"])
def _argmax_kernel(x_ptr, out_ptr, part_val_ptr, part_idx_ptr, lock_ptr, V, stride_row,
                   chunk_blocks, splits, BLOCK: tl.constexpr, PART_BLOCK: tl.constexpr,
                   PDL: tl.constexpr = False):
    # Grid (rows, splits): program (row, s) scans elements [s * chunk, (s + 1) * chunk) of its
    # row, chunk = chunk_blocks * BLOCK. chunk_blocks and splits change with the row count, so
    # they are not specialised on (one compiled variant per dtype). Each lane keeps the first
    # maximum it has seen: an element replaces it only when larger, or when it is the lane's first
    # NaN; elements come in index order, so equal values keep the earlier index. The lanes' best
    # start as -inf at the first block's indices, which is that block's value wherever it is -inf
    # (a row of -inf gives index 0). Masked lanes (past the row's end) read -inf at indices past
    # it: they never beat an element.
    pdl_start(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    lanes = tl.arange(0, BLOCK)
    # Chunks are whole blocks, so only the row's last block is partial: block-aligned starts and
    # a mask on V (specialised on when it divides by 16) let the loads vectorise.
    chunk = chunk_blocks * BLOCK
    begin = split * chunk
    end = tl.minimum(begin + chunk, V)
    x_row = x_ptr + row.to(tl.int64) * stride_row
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = begin + lanes
    for start in range(begin, end, BLOCK):
        offs = start + lanes
        x = tl.load(x_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        take = (x > best) | ((x != x) & (best == best))
        best = tl.where(take, x, best)
        best_idx = tl.where(take, offs, best_idx)
    value, index = _first_max(best, best_idx)
    if splits == 1:
        tl.store(out_ptr + row, index.to(tl.int64))
    else:
        slot = row * splits + split
        tl.store(part_val_ptr + slot, value)
        tl.store(part_idx_ptr + slot, index)
        tl.debug_barrier()  # the partial's stores precede the release below
        arrived = tl.atomic_add(lock_ptr + row, 1, sem="acq_rel", scope="gpu")
        if arrived == splits - 1:
            # The row's last program: every other partial is visible after the acquire. Partials
            # are read past L1 (.cg), which may hold lines from before they were written.
            tl.debug_barrier()
            parts = tl.arange(0, PART_BLOCK)
            acc = tl.full([PART_BLOCK], float("-inf"), tl.float32)
            acc_idx = tl.full([PART_BLOCK], 2147483647, tl.int32)
            for p0 in range(0, splits, PART_BLOCK):
                p = p0 + parts
                ok = p < splits
                v = tl.load(part_val_ptr + row * splits + p, mask=ok, other=float("-inf"),
                            cache_modifier=".cg")
                i = tl.load(part_idx_ptr + row * splits + p, mask=ok, other=2147483647,
                            cache_modifier=".cg")
                # Partials come in index order along a lane, as elements did above; an equal
                # value still replaces the start (-inf at no index), as a chunk may be all -inf.
                take = (v > acc) | ((v != v) & (acc == acc)) | ((v == acc) & (i < acc_idx))
                acc = tl.where(take, v, acc)
                acc_idx = tl.where(take, i, acc_idx)
            _, first = _first_max(acc, acc_idx)
            tl.store(out_ptr + row, first.to(tl.int64))
            # Re-arm the row's counter for the next launch (also across CUDA-graph replays).
            tl.atomic_xchg(lock_ptr + row, 0, sem="relaxed", scope="gpu")


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: small, so the CPU tests meet rows both split and whole
    return torch.cuda.get_device_properties(device).multi_processor_count


# Per device: (most programs a launch may aim at, zeroed per-row arrival counters, partial maxima,
# their indices).
_workspaces: dict[torch.device, tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The device's split workspace, allocated on first use outside graph capture (None while
    capturing before it exists). A launch aiming at P programs splits rows only while they are
    fewer than P, so P counters and 2P partials (rows x splits < P + rows) suffice; the
    workspace holds them for P up to `programs`. Launches on one stream run one after another,
    so they can share it (the counters are back at zero when a launch ends)."""
    ws = _workspaces.get(device)
    if ws is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        programs = MAX_PROGRAMS_PER_SM * _num_sms(device)
        ws = _workspaces[device] = (
            programs, torch.zeros(programs, dtype=torch.int32, device=device),
            torch.empty(2 * programs, dtype=torch.float32, device=device),
            torch.empty(2 * programs, dtype=torch.int32, device=device))
    return ws


def split_for(m: int, v: int, programs: int, block: int) -> tuple[int, int]:
    """(splits per row, chunk length) for m rows of v elements: about `programs` programs in all
    but never more than one per `block` elements of a row, every chunk a whole number of blocks
    and none empty. Rows at or past `programs` are not split."""
    want = max(1, min(triton.cdiv(programs, m), triton.cdiv(v, block)))
    chunk = triton.cdiv(triton.cdiv(v, want), block) * block
    return triton.cdiv(v, chunk), chunk


def triton_argmax_enabled() -> bool:
    """KILN_TRITON_ARGMAX=0 keeps torch's argmax (default 1: the split kernel)."""
    return os.environ.get("KILN_TRITON_ARGMAX", "1") != "0"


def argmax(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Index of each row's maximum (dispatcher): [M, V] float16/bfloat16/float32 -> int64 [M] on
    the same device, equal to ``logits.argmax(dim=-1)`` (ties: first index; NaN: the first NaN).
    ``out``: a contiguous int64 [M] to write them into (returned), else a new tensor.

    The Triton kernel runs for 2-D logits with unit stride along the vocabulary (rows may be
    strided); anything else, and every call under KILN_TRITON_ARGMAX=0, takes torch's argmax.
    Nothing here waits on the device, and the launch can be captured in a CUDA graph.
    """
    if out is not None and (out.dtype != torch.int64 or out.shape != logits.shape[:-1]
                            or not out.is_contiguous() or out.device != logits.device):
        raise ValueError(f"argmax out must be a contiguous int64 {tuple(logits.shape[:-1])} on "
                         f"{logits.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if (not triton_argmax_enabled() or not use_triton(logits) or logits.dim() != 2
            or logits.dtype not in (torch.float16, torch.bfloat16, torch.float32)
            or logits.stride(-1) != 1 or logits.shape[0] == 0
            or not 1 <= logits.shape[1] <= _INT32_MAX // 2):
        return _ref_into(logits, out)
    got = launch(logits, out=out)
    # Only while capturing a graph before the first eager call on the device (no workspace yet).
    return got if got is not None else _ref_into(logits, out)


def _ref_into(logits: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return argmax_ref(logits)
    return out.copy_(argmax_ref(logits))


def launch(logits: torch.Tensor, num_warps: int = NUM_WARPS,
           programs_per_sm: int = PROGRAMS_PER_SM,
           out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Run the kernel on 2-D logits the dispatcher accepts (other launch settings: benchmarks),
    into out when given; None while capturing a graph before the device's workspace exists."""
    ws = _workspace(logits.device)
    if ws is None:
        return None
    capacity, locks, part_val, part_idx = ws
    programs = min(capacity, programs_per_sm * _num_sms(logits.device))
    m, v = logits.shape
    block = block_for(logits.dtype, num_warps)
    splits, chunk = split_for(m, v, programs, block)
    if out is None:
        out = torch.empty(m, dtype=torch.int64, device=logits.device)
    _argmax_kernel[(m, splits)](
        logits, out, part_val, part_idx, locks, v, logits.stride(0), chunk // block, splits,
        BLOCK=block, PART_BLOCK=PART_BLOCK, num_warps=num_warps, **pdl_args(logits))
    return out
