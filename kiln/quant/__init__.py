"""Quantization schemes (one file each: fp8, int8 weight-only, int4 + AWQ, SmoothQuant) and calibration.

Each scheme is a ``LinearMethod`` (kiln.layers.linear) holding the processed tensors of
notes/quant_interface.md; ``kiln.quant.model_quant.quantize_model`` turns a float model into those
tensors and ``kiln.quant.config.linear_method_factory`` rebuilds the layers at load time.
"""

from kiln.quant.config import SCHEMES, QuantConfig, linear_method_factory

__all__ = ["SCHEMES", "QuantConfig", "linear_method_factory"]
