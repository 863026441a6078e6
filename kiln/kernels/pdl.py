"""The start of every kiln kernel under programmatic dependent launch (see kiln.kernels.pdl_enabled),
and the L2 prefetch a GEMV issues before it waits."""

import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """With PDL (1): wait for the previous kernel in the stream to complete and its writes to be
    visible, then let the next kernel be scheduled (it waits the same way). With PDL 2 (early):
    let the next kernel be scheduled first, then wait; the next kernel still waits for this one's
    completion, which follows this one's wait, so the order of memory effects is the same and
    only the scheduling moves earlier (the next kernel's work before its own wait, such as a
    weight prefetch, overlaps this one's). Call it before the kernel's first memory access that
    depends on a previous kernel. Without PDL (0 or False): nothing."""
    if PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    elif PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@gluon.jit
def pdl_start_gluon(PDL: gl.constexpr):
    """pdl_start for Gluon kernels (the same PDL values; Triton's gdc helpers are not Gluon
    builtins, so the two instructions are written in PTX)."""
    if PDL == 2:
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
    elif PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_l2(addr, nbytes, mask):
    """Ask the copy engine to bring nbytes from each address into L2 (cp.async.bulk.prefetch,
    sm_90+): addr int64 tensor of 16-byte aligned addresses, nbytes int32 multiples of 16, mask
    which lanes prefetch. Nothing is written and nothing waits for it. CUDA only (inline PTX)."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $3, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r,r", [addr, nbytes, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
