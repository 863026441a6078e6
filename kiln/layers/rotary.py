"""Rotary position embedding: the float32 cos/sin cache, for default, linear and llama3 scaling.

The frequencies are computed with the same float32 operations, in the same order, as Hugging Face
transformers, so that positions rotate identically and float32 logits match to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.kernels.rotary import rotary_and_write_kv

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    """Normalised RoPE settings (from ``rope_parameters`` or ``rope_theta`` + ``rope_scaling``).

    ``factor`` is used by linear and llama3 scaling; the ``*_freq_factor`` and
    ``original_max_position_embeddings`` fields only by llama3.
    """

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise KilnError(f"RoPE type {self.rope_type!r} is not supported; kiln supports "
                            f"{', '.join(SUPPORTED_ROPE_TYPES)}")
        if self.rope_type == "llama3" and self.original_max_position_embeddings is None:
            raise KilnError("llama3 RoPE scaling needs original_max_position_embeddings in the "
                            "config's rope_scaling / rope_parameters")


def inverse_frequencies(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """The head_dim/2 float32 inverse frequencies, scaled as ``rope`` says."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.rope_type == "linear":
        # Dividing the frequencies is the same as dividing the positions by the factor.
        inv_freq = inv_freq / rope.factor
    elif rope.rope_type == "llama3":
        inv_freq = _llama3_scale(inv_freq, rope)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths slowed by ``factor``, short ones kept, a smooth blend between."""
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def build_cos_sin_cache(head_dim: int, max_positions: int, rope: RopeConfig,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """[max_positions, head_dim] float32: cos of the head_dim/2 angles, then their sin.

    Angles are computed on the CPU (the same bits on every device) and then moved.
    """
    inv_freq = inverse_frequencies(head_dim, rope)
    positions = torch.arange(max_positions, dtype=torch.int64).to(torch.float32)
    angles = positions[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(device)


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin cache; rotates q and k and writes k/v into the paged cache in one call."""

    def __init__(self, head_dim: int, max_positions: int, rope: RopeConfig,
                 device: torch.device | str):
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.rope = rope
        self.register_buffer("cos_sin_cache", build_cos_sin_cache(head_dim, max_positions, rope, device),
                             persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, slot_mapping: torch.Tensor, k_scale: float = 1.0,
                v_scale: float = 1.0, k_out: torch.Tensor | None = None,
                v_out: torch.Tensor | None = None, q_out: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Rotate q [T, Hq, D] and k [T, Hk, D]; store k and v at ``slot_mapping`` (an fp8 cache
        scaled by ``k_scale``/``v_scale``) and rotated k in ``k_out`` if given (an fp8 cache's
        codes of k and v in ``k_out`` and ``v_out``); return rotated q (in ``q_out`` if given)."""
        return rotary_and_write_kv(q, k, v, positions, self.cos_sin_cache, kv_cache, slot_mapping,
                                   k_scale, v_scale, k_out, v_out, q_out)
