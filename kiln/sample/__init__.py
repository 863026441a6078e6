"""Batched sampling with per-request parameters and counter-based randomness (no host sync)."""

from kiln.sample.metadata import SamplingBatch, SamplingRow
from kiln.sample.sampler import Sampler, SamplerOutput

__all__ = ["Sampler", "SamplerOutput", "SamplingBatch", "SamplingRow"]
