"""Row-granular dependencies between the kernels of a decode step.

Under programmatic dependent launch every kiln kernel waits for the whole kernel before it
(griddepcontrol.wait) before its first dependent read. At batch 1 each such wait costs the memory
pipeline its drain and ramp, a few microseconds a boundary: dropping the waits of the MLP's down
projection (with SiLU-mul) alone took a bf16 8B step from 4.27 to 4.17 ms on the H200, those of
o_proj to 4.15 ms, both to 4.01 (benchmarks/h200-dataflow). The weights, most of a GEMV's bytes,
depend on nothing.

Here a producer marks each granule of its output ready (a release store of the step's epoch into
a flag) when the granule's final values are written, and the consumer's programs wait for the
granules they read alone (acquire polls), and for the whole producer (griddepcontrol.wait) only
before their own stores (waiter_stores; the RMSNorm waiter at its end, waiter_end). PDL launches
the consumer only once every producer program runs, so the granules it polls are all being
computed: no deadlock. The layouts of a slot (FlagSlot):

- a tensor-core GEMV's output: one flag per 16 columns for all its rows at once (a tile holds
  every row): ``granule`` 16, ``row_stride`` 0;
- decode attention's output: one flag per token and kv head, set by the program that stores
  that head group's final output: ``granule`` the group's query heads times head_dim,
  ``row_stride`` the kv head count;
- an RMSNorm's output: one flag per row: ``granule`` hidden, ``row_stride`` 1.

The epoch is one int32 on the device, advanced once per forward (``RowFlags.begin``, a kernel
the decode graph captures), so a flag written in an earlier step never reads as ready.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

FLAG_ROWS = 16  # a GEMV's output columns (weight rows) per ready flag; its tiles are multiples
_FLAG_ROWS = tl.constexpr(FLAG_ROWS)
_WAIT_CHUNK = tl.constexpr(64)        # flags polled at once
_MAX_POLLS = tl.constexpr(1 << 22)    # a poll loop gives up (counting it) after this many rounds


_BOUNDARIES = ("qkv", "attn", "mlp", "norm")
# inline PTX (the acquire-load polls) only in compiled kernels: the interpreter cannot run it
_ASM = tl.constexpr(os.environ.get("TRITON_INTERPRET", "") != "1")


def dataflow_enabled(boundary: str | None = None) -> bool:
    """KILN_DATAFLOW: which boundaries of unquantized decode rows run with row-granular
    dependencies: "1" all; else a comma-separated list of "qkv" (qkv_proj -> decode attention,
    with RoPE in the attention kernel: KILN_ATTN_ROPE=1), "attn" (decode attention -> o_proj),
    "mlp" (gate_up -> down, SiLU-mul folded into down's GEMV), "norm" (o_proj and down ->
    the next add + RMSNorm -> the GEMV after it); "0" or unset none (the default).
    ``boundary`` None: whether any is."""
    flag = os.environ.get("KILN_DATAFLOW", "0") or "0"
    names = flag.split(",")
    if flag not in ("0", "1") and not all(name in _BOUNDARIES for name in names):
        raise ValueError(f"KILN_DATAFLOW={flag!r}: expected 0, 1, or a comma-separated list of "
                         f"{', '.join(_BOUNDARIES)}")
    if boundary is None:
        return flag != "0"
    return flag == "1" or boundary in names


def poll_loads_enabled() -> bool:
    """KILN_DATAFLOW_POLL=load: waiters poll their flags with acquire loads (ld.acquire.gpu) instead
    of acquire atomics (a read-modify-write of 0 that every polling program sends to the flag's
    L2 line). Off by default: not yet measured. The interpreter always polls with atomics."""
    return os.environ.get("KILN_DATAFLOW_POLL", "atomic") == "load"


def early_launch_enabled() -> bool:
    """KILN_DATAFLOW_EARLY_LAUNCH=1: a kernel that waits on ready flags lets the kernel after it
    be scheduled as it starts (it still waits for the kernel before it, griddepcontrol.wait,
    before its first store, so the next kernel's own wait keeps the order), instead of only
    then. Off by default: not yet measured."""
    return os.environ.get("KILN_DATAFLOW_EARLY_LAUNCH", "0") == "1"


@triton.jit
def waiter_start(PDL: tl.constexpr, EARLY_LAUNCH: tl.constexpr):
    """The start of a kernel that waits on ready flags instead of the kernel before: with
    EARLY_LAUNCH (under PDL) the next kernel may be scheduled from here. (Such a kernel's stores
    come after waiter_stores, except into memory no earlier kernel of the step reads: the
    RMSNorm waiter's own rows and the residual, the decode attention's new K/V slot.)"""
    if PDL and EARLY_LAUNCH:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def waiter_end(PDL: tl.constexpr):
    """The end of a flag waiter that stored before it (into buffers no earlier kernel still
    uses) and let the next kernel be scheduled at its start: wait for the whole kernel before,
    so that this kernel's completion still implies that one's (the chain every next kernel's
    griddepcontrol.wait relies on)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def waiter_stores(PDL: tl.constexpr, EARLY_LAUNCH: tl.constexpr):
    """Before a flag waiter's first store (and first use of the shared split counters): wait
    for the whole kernel before (griddepcontrol.wait) and, unless waiter_start did, let the
    next kernel be scheduled."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        if not EARLY_LAUNCH:
            tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def fresh_load(ptrs, mask, FRESH: tl.constexpr):
    """Load (0 where masked); FRESH: from L2 (.cg), values another program just wrote."""
    if FRESH:
        return tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    else:
        return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def signal_rows(flag_ptr, epoch_ptr, rows2, cols2, N):
    """After a tile's final stores of output columns cols2 (rows2 broadcast beside them, as in
    qmm_common._finish_tile): mark the tile's 16-column granules ready for this step's epoch.
    The barrier puts every thread's stores before the release."""
    tl.debug_barrier()
    epoch = tl.load(epoch_ptr)
    first = (cols2 % _FLAG_ROWS == 0) & (rows2 == 0) & (cols2 < N)
    tl.atomic_xchg(flag_ptr + cols2 // _FLAG_ROWS + rows2 * 0, epoch + cols2 * 0 + rows2 * 0,
                   mask=first, sem="release", scope="gpu")


@triton.jit
def signal_granule(flag_ptr, epoch_ptr, index):
    """After a program's final stores of one granule (every row it covers): mark flag ``index``
    ready for this step's epoch. The barrier puts every thread's stores before the release."""
    tl.debug_barrier()
    tl.atomic_xchg(flag_ptr + index, tl.load(epoch_ptr), sem="release", scope="gpu")


@triton.jit
def _acquire_loads(ptrs):
    """The int32 flags at ptrs, each an acquire load at GPU scope (never hoisted out of a loop)."""
    return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l",
                                     [ptrs.to(tl.int64, bitcast=True)], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def wait_rows(flag_ptr, epoch_ptr, err_ptr, c_begin, c_end, n_rows, GRAN: tl.constexpr = 16,
              ROW_STRIDE: tl.constexpr = 0, LOADS: tl.constexpr = False):
    """Wait until the granules (GRAN columns each) covering columns [c_begin, c_end) hold this
    step's epoch (acquire), then let every thread of the program go on (barrier). ROW_STRIDE 0:
    one flag a granule for all rows; else each of the n_rows rows has its own flags, ROW_STRIDE
    apart. A loop that polls _MAX_POLLS rounds in vain adds 1 at err_ptr and goes on (wrong
    values rather than a hung GPU). LOADS: poll with acquire loads, not acquire atomics (compiled
    kernels; the waiter's WAIT is 2, kernel_args)."""
    epoch = tl.load(epoch_ptr)
    g_begin = c_begin // GRAN
    width = tl.cdiv(c_end, GRAN) - g_begin
    if ROW_STRIDE == 0:
        total = width
    else:
        total = width * n_rows
    across = tl.maximum(width, 1)
    for i0 in range(0, total, _WAIT_CHUNK):
        i = i0 + tl.arange(0, _WAIT_CHUNK)
        live = i < total
        flags = flag_ptr + (i // across) * ROW_STRIDE + g_begin + i % across
        pending = 1
        polls = 0
        while (pending > 0) & (polls < _MAX_POLLS):
            if LOADS and _ASM:
                seen = _acquire_loads(tl.where(live, flags, flag_ptr))
            else:
                seen = tl.atomic_add(flags, 0, mask=live, sem="acquire", scope="gpu")
            pending = tl.sum(tl.where(live & (seen != epoch), 1, 0))
            polls += 1
        if pending > 0:
            tl.atomic_add(err_ptr, 1)
    tl.debug_barrier()


def kernel_args(signal: "FlagSlot | None", wait: "FlagSlot | None") -> dict:
    """The launch arguments every flag-aware kernel takes for a producer slot it signals into
    (sig_ptr, epoch_ptr, SIGNAL) and one it waits on (wait_ptr, epoch_ptr, err_ptr, WAIT,
    EARLY_LAUNCH); the two share one epoch (one RowFlags). WAIT is 1, or 2 to poll with acquire
    loads (poll_loads_enabled; the kernel passes WAIT == 2 to wait_rows's LOADS)."""
    args = {}
    if signal is not None:
        args.update(sig_ptr=signal.flags, epoch_ptr=signal.epoch, SIGNAL=True)
    if wait is not None:
        if signal is not None and wait.epoch is not signal.epoch:
            raise ValueError("a kernel signals and waits on flags of one RowFlags")
        args.update(wait_ptr=wait.flags, epoch_ptr=wait.epoch, err_ptr=wait.errors,
                    WAIT=2 if poll_loads_enabled() else 1,
                    EARLY_LAUNCH=early_launch_enabled())
    return args


class RowFlags:
    """Ready flags of ``slots`` producer outputs, ``width`` flags each, plus the step epoch they
    are compared with, and a count of poll loops that gave up (0 unless something is wrong).
    A GEMV output of N columns takes cdiv(N, FLAG_ROWS) flags; a decode attention output of T
    rows T times its kv head count."""

    def __init__(self, slots: int, width: int, device: torch.device | str):
        self.flags = torch.zeros(slots, width, dtype=torch.int32, device=device)
        self.epoch = torch.zeros(1, dtype=torch.int32, device=device)
        self.errors = torch.zeros(1, dtype=torch.int32, device=device)

    def begin(self) -> None:
        """Advance the epoch: call once per forward, before any producer of the forward."""
        self.epoch.add_(1)

    def slot(self, index: int, granule: int = FLAG_ROWS, row_stride: int = 0) -> "FlagSlot":
        """The flags of producer ``index``: one per ``granule`` columns, shared by all rows
        (``row_stride`` 0) or each row's own, ``row_stride`` flags apart."""
        return FlagSlot(self.flags[index], self.epoch, self.errors, granule, row_stride)


class FlagSlot:
    """One producer's flags with the shared epoch and error count: what a producer signals into
    and its consumer waits on. ``granule``: output columns per flag; ``row_stride``: 0 when a
    flag covers every row (a GEMV tile), else the flags between consecutive rows' (decode
    attention: its kv head count)."""

    def __init__(self, flags: torch.Tensor, epoch: torch.Tensor, errors: torch.Tensor,
                 granule: int = FLAG_ROWS, row_stride: int = 0):
        if granule <= 0 or row_stride < 0:
            raise ValueError(f"a flag slot needs granule > 0 and row_stride >= 0, got {granule} "
                             f"and {row_stride}")
        self.flags = flags
        self.epoch = epoch
        self.errors = errors
        self.granule = granule
        self.row_stride = row_stride
        # Set by the host code that launches the producer with this slot (``arm``): a consumer
        # launched later in the same forward waits on the slot only if it is armed, so a
        # producer that took another path (and signals nothing) never leaves it polling.
        self.armed = False

    def arm(self) -> "FlagSlot":
        """Mark that a producer was launched to signal into this slot; returns the slot."""
        self.armed = True
        return self
