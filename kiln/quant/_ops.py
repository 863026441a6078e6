"""The quantized matmul ops the LinearMethods call: kiln.kernels.quant_matmul's dispatchers.

One import point, so that the schemes name the ops the same way and a test can see what they use.
"""

from kiln.kernels.int4_bits import int4_row_block, tile_int4_rows
from kiln.kernels.quant_matmul import fp8_linear, int4_wo_linear, int8_sq_linear, int8_wo_linear

__all__ = ["fp8_linear", "int4_row_block", "int4_wo_linear", "int8_sq_linear", "int8_wo_linear",
           "tile_int4_rows"]
