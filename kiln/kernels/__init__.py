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
