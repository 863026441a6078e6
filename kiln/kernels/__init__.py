"""Kernels: one file per op, each with a Triton kernel, a torch reference and one dispatcher.

The dispatcher runs the Triton kernel on CUDA tensors and the reference elsewhere. Setting the
environment variable ``KILN_KERNELS=reference`` forces the references everywhere (for debugging and
for parity checks on the GPU).
"""

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


ARRIVAL_COUNTERS = 16384  # per device; see arrival_counters
_arrival_counters: dict[torch.device, torch.Tensor] = {}


def arrival_counters(device: torch.device) -> torch.Tensor | None:
    """The device's zeroed int32 arrival counters, for kernels whose last-arriving program
    finishes the work of its peers (and re-zeroes its counter before the kernel ends).

    Kernels on one stream run one after another, so they can share the counters. Allocated on
    first use outside graph capture; None while capturing before they exist (the caller then
    takes its two-kernel path).
    """
    counters = _arrival_counters.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        counters = _arrival_counters[device] = torch.zeros(ARRIVAL_COUNTERS, dtype=torch.int32,
                                                           device=device)
    return counters
