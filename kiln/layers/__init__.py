"""Model building blocks: linear (+ quantization hook), rotary, norm, activation, embedding, attention.

Nothing is imported here: kernels import ``kiln.layers.forward_context``, and importing the layers
from this package would make that circular.
"""
