"""Kernels: one file per op, each with a Triton kernel, a torch reference and one dispatcher.

The dispatcher runs the Triton kernel on CUDA tensors and the reference elsewhere. Setting the
environment variable ``KILN_KERNELS=reference`` forces the references everywhere (for debugging and
for parity checks on the GPU).
"""

import contextlib
import os

import torch


def use_triton(t: torch.Tensor) -> bool:
    """Whether the dispatcher should take the Triton path for a tensor on this device."""
    if os.environ.get("KILN_KERNELS", "") == "reference":
        return False
    if t.is_cuda:
        return True
    # Under TRITON_INTERPRET=1 the Triton kernels run on the CPU (tests only).
    return os.environ.get("TRITON_INTERPRET", "") == "1" and os.environ.get("KILN_KERNELS", "") == "triton"


_PDL_DEVICES: dict[int, bool] = {}
# Four e4m3 codes of a 32-bit word (bytes 0..3) -> four float16, two per instruction (PTX,
# sm_89+): $0..$3 the codes of bytes 0..3, $4 the word. The fp8-cache attention kernels (Triton
# and Gluon) wrap it in their dialect's constexpr.
E4M3X4_F16_PTX = """
{
.reg .b16 klo, khi;
.reg .b32 kp, kq;
mov.b32 {klo, khi}, $4;
cvt.rn.f16x2.e4m3x2 kp, klo;
cvt.rn.f16x2.e4m3x2 kq, khi;
mov.b32 {$0, $1}, kp;
mov.b32 {$2, $3}, kq;
}
"""
_PDL_SCOPE = [False]
PDL_MAX_BATCH = 64  # decode graphs up to this batch size launch with PDL under KILN_PDL=auto


@contextlib.contextmanager
def pdl_scope(on: bool):
    """Within: kernels launch with programmatic dependent launch under KILN_PDL=auto (the
    default). The model runner opens it around capturing small decode graphs, so only those
    replays use PDL (and the warm-up before each capture compiles its kernel variants)."""
    before = _PDL_SCOPE[0]
    _PDL_SCOPE[0] = on
    try:
        yield
    finally:
        _PDL_SCOPE[0] = before


def pdl_enabled(t: torch.Tensor) -> bool:
    """Whether a launch on t's device uses programmatic dependent launch (CUDA sm90+).

    KILN_PDL=auto (default): inside pdl_scope(True) only; 1: every launch; 0: never.
    A kernel so launched may be scheduled while the kernel before it in the stream still runs;
    every kiln kernel compiled with PDL=True waits for its predecessor's completion and memory
    (griddepcontrol.wait) before its first load or store, so results do not change. What is
    saved is the launch and scheduling latency between consecutive kernels.
    """
    mode = os.environ.get("KILN_PDL", "auto")
    if not t.is_cuda or mode == "0" or (mode != "1" and not _PDL_SCOPE[0]):
        return False
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _PDL_DEVICES:
        _PDL_DEVICES[index] = torch.cuda.get_device_capability(index) >= (9, 0)
    return _PDL_DEVICES[index]


def pdl_early() -> bool:
    """KILN_PDL_EARLY=1: PDL kernels let the next kernel be scheduled before they wait for the
    previous one (kiln.kernels.pdl.pdl_start's PDL=2), so a GEMV's weight prefetch can overlap
    the small kernels before it."""
    return os.environ.get("KILN_PDL_EARLY", "0") == "1"


def pdl_small_early() -> bool:
    """KILN_PDL_TRIGGER=early: the small kernels between a decode step's GEMVs (norms, SiLU-mul,
    rotary, attention) let the next kernel be scheduled before they wait (PDL 2), the GEMVs as
    by default. A ring GEMV (kiln.kernels.ring_gemv) after a small kernel is then launched while
    the GEMV before that small kernel still runs, so its early weight copies overlap that
    GEMV's tail, as they do when two ring GEMVs follow each other. Unset: early inside
    batch1_ring_scope(True), else right after their wait (=start forces that everywhere)."""
    trigger = os.environ.get("KILN_PDL_TRIGGER")
    return _BATCH1_RING_SCOPE[0] if trigger is None else trigger == "early"


_BATCH1_RING_SCOPE = [False]


@contextlib.contextmanager
def batch1_ring_scope(on: bool):
    """Within: one-row products of float16/bfloat16 weights take the ring GEMV
    (kiln.kernels.ring_gemv) where it applies, and the small kernels trigger their successor
    before they wait (as KILN_PDL_TRIGGER=early does everywhere). The decode graphs open it
    around capturing the batch-1 graph of an engine whose decode-step tuning chose the ring
    (engine.json kernel_tuning.batch1_gemv; kiln.tune.in_situ.choose_batch1_ring).
    KILN_RING_GEMV and KILN_PDL_TRIGGER, when set, take precedence."""
    before = _BATCH1_RING_SCOPE[0]
    _BATCH1_RING_SCOPE[0] = on
    try:
        yield
    finally:
        _BATCH1_RING_SCOPE[0] = before


def batch1_ring() -> bool:
    """Whether the launches being made are inside batch1_ring_scope(True)."""
    return _BATCH1_RING_SCOPE[0]


def weight_prewait() -> bool:
    """Whether the small kernels of a decode step load their constant inputs (a norm's weight)
    before their PDL wait rather than where the computation first needs them
    (KILN_PDL_PREWAIT, default 1; 0 for the old order). Always safe: nothing writes them."""
    return os.environ.get("KILN_PDL_PREWAIT", "1") != "0"


def pdl_prewait() -> bool:
    """Whether the decode attention kernel reads the step's inputs (sequence lengths, query
    starts, positions, block tables) and the cache's older keys and values before its PDL wait
    (KILN_PDL_PREWAIT, default 1, and not KILN_PDL_EARLY).

    Why that is safe: a kernel may run its code before the wait once the kernel before it has
    triggered. Every kiln GEMV waits before it triggers (PDL 1), so when the attention kernel
    that follows qkv_proj (directly, or through a small kernel that triggers early) starts,
    qkv_proj has passed its wait: every kernel before qkv_proj has completed, the step's input
    copies among them, and the cache's older entries were written by earlier steps. Under
    KILN_PDL_EARLY=1 every kernel triggers before it waits and no kernel before it is known to
    be done, so this is off there."""
    return weight_prewait() and not pdl_early()


def pdl_args(t: torch.Tensor, small: bool = False) -> dict:
    """Launch keyword arguments: the kernels' PDL constexpr (False off, 1 on, 2 on and early:
    every kernel under KILN_PDL_EARLY=1, `small` kernels where pdl_small_early says), plus
    Triton's launch_pdl when on."""
    if not pdl_enabled(t):
        return {"PDL": False}
    if small and pdl_small_early():
        return {"PDL": 2, "launch_pdl": True}
    return {"PDL": 2 if pdl_early() else 1, "launch_pdl": True}
