"""Row-granular dependencies between a decode GEMV and the GEMV that reads its output.

Under programmatic dependent launch every kiln kernel waits for the whole kernel before it
(griddepcontrol.wait) before its first dependent read. At batch 1 each such wait costs the memory
pipeline its drain and ramp, a few microseconds a boundary: dropping the waits of the MLP's down
projection (with SiLU-mul) alone took a bf16 8B step from 4.27 to 4.17 ms on the H200
(benchmarks/h200-dataflow). The weights, most of a GEMV's bytes, depend on nothing.

Here a producer GEMV marks each 16-row granule of its output ready (a release store of the
step's epoch into a flag) when the granule's final values are written, and the consumer's
programs, which read only the K slice of their split, wait for those granules alone (acquire
polls), stream their weights meanwhile, and wait for the whole producer (griddepcontrol.wait)
only before their own stores. PDL launches the consumer only once every producer program runs,
so the granules it polls are all being computed: no deadlock.

The epoch is one int32 on the device, advanced once per forward (``RowFlags.begin``, a kernel
the decode graph captures), so a flag written in an earlier step never reads as ready.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

FLAG_ROWS = 16          # output rows per ready flag; producer tiles are multiples of it
_FLAG_ROWS = tl.constexpr(FLAG_ROWS)
_WAIT_CHUNK = tl.constexpr(64)        # flags polled at once
_MAX_POLLS = tl.constexpr(1 << 22)    # a poll loop gives up (counting it) after this many rounds


def dataflow_enabled() -> bool:
    """KILN_DATAFLOW=1: the gated MLP of unquantized decode rows runs gate_up -> down with
    row-granular dependencies (SiLU-mul folded into down's GEMV). Off by default."""
    return os.environ.get("KILN_DATAFLOW", "0") == "1"


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
def wait_rows(flag_ptr, epoch_ptr, err_ptr, r_begin, r_end):
    """Wait until the granules of rows [r_begin, r_end) hold this step's epoch (acquire), then
    let every thread of the program go on (barrier). A loop that polls _MAX_POLLS rounds in
    vain adds 1 at err_ptr and goes on (wrong values rather than a hung GPU)."""
    epoch = tl.load(epoch_ptr)
    g_end = tl.cdiv(r_end, _FLAG_ROWS)
    for g0 in range(r_begin // _FLAG_ROWS, g_end, _WAIT_CHUNK):
        g = g0 + tl.arange(0, _WAIT_CHUNK)
        live = g < g_end
        pending = 1
        polls = 0
        while (pending > 0) & (polls < _MAX_POLLS):
            seen = tl.atomic_add(flag_ptr + g, 0, mask=live, sem="acquire", scope="gpu")
            pending = tl.sum(tl.where(live & (seen != epoch), 1, 0))
            polls += 1
        if pending > 0:
            tl.atomic_add(err_ptr, 1)
    tl.debug_barrier()


class RowFlags:
    """Ready flags of the row granules of ``slots`` producer outputs of up to ``rows`` rows, plus
    the step epoch they are compared with, and a count of poll loops that gave up (0 unless
    something is wrong)."""

    def __init__(self, slots: int, rows: int, device: torch.device | str):
        self.flags = torch.zeros(slots, triton.cdiv(rows, FLAG_ROWS), dtype=torch.int32,
                                 device=device)
        self.epoch = torch.zeros(1, dtype=torch.int32, device=device)
        self.errors = torch.zeros(1, dtype=torch.int32, device=device)

    def begin(self) -> None:
        """Advance the epoch: call once per forward, before any producer of the forward."""
        self.epoch.add_(1)

    def slot(self, index: int) -> "FlagSlot":
        """The flags of producer ``index``."""
        return FlagSlot(self.flags[index], self.epoch, self.errors)


class FlagSlot:
    """One producer's flags with the shared epoch and error count: what a producer GEMV signals
    into and its consumer waits on."""

    def __init__(self, flags: torch.Tensor, epoch: torch.Tensor, errors: torch.Tensor):
        self.flags = flags
        self.epoch = epoch
        self.errors = errors
