"""The start of every kiln kernel under programmatic dependent launch (see kiln.kernels.pdl_enabled)."""

import triton
import triton.language as tl


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """With PDL: wait for the previous kernel in the stream to complete and its writes to be
    visible, then let the next kernel be scheduled (it waits the same way). Call it before the
    kernel's first memory access. Without PDL: nothing."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
