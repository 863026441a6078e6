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


@triton.jit
def prefetch_l2(ptrs, nbytes, valid):
    """Ask the L2 cache to fetch nbytes (a multiple of 16; addresses 16-byte aligned) from each
    pointer of ptrs where valid (int32, nonzero) is set: cp.async.bulk.prefetch.L2 (sm_90), which
    takes no registers and is not waited for. A weight-streaming kernel launched with PDL calls it
    before pdl_start: its weights do not depend on the previous kernel, so their first bytes are
    on the way while that kernel finishes. CUDA only (the interpreter has no inline assembly)."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; }"
        " mov.u32 $0, 0;",
        "=r,l,r,r", [ptrs, nbytes, valid], dtype=tl.int32, is_pure=False, pack=1)
