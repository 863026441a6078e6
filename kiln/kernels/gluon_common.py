"""What the Gluon decode kernels (decode_gluon) take from outside: their start under programmatic
dependent launch, and the layouts of one warp's mma.sync m16n8k16 tiles and operands."""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# One warp's mma.sync m16n8k16 tiles (accumulators) and their A and B operands (16-bit elements).
MMA = gl.constexpr(gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1],
                                             instr_shape=[16, 8]))
A_OPERAND = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=MMA.value, k_width=2))
B_OPERAND = gl.constexpr(gl.DotOperandLayout(operand_index=1, parent=MMA.value, k_width=2))


@gluon.jit
def gluon_pdl_start(PDL: gl.constexpr):
    """kiln.kernels.pdl.pdl_start (PDL 1) for Gluon kernels: wait for the previous kernel in the
    stream, then let the next one be scheduled."""
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)
