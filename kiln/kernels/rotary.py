"""Rotary position embedding (rotate-half / NeoX layout) applied to q and k."""

from __future__ import annotations

import torch

from kiln.kernels.attention import write_kv_ref


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference RoPE.

    q: [T, Hq, D], k: [T, Hk, D], positions: [T] int, cos_sin_cache: [max_pos, D] float32 holding
    cos of the D/2 frequencies in the first half and sin in the second. Rotation uses the
    rotate-half layout (pairs (i, i + D/2)), as Llama/Mistral/Qwen checkpoints in HF format expect.
    cos/sin are cast to q's dtype before use, matching the HF implementation.
    """
    cos_sin = cos_sin_cache.index_select(0, positions.long())
    cos, sin = cos_sin.chunk(2, dim=-1)
    cos = torch.cat([cos, cos], dim=-1).to(q.dtype).unsqueeze(1)
    sin = torch.cat([sin, sin], dim=-1).to(q.dtype).unsqueeze(1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    return rotate(q), rotate(k)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q and k (dispatcher); returns new tensors."""
    return apply_rotary_ref(q, k, positions, cos_sin_cache)


def rotary_and_write_kv_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                            cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor,
                            slot_mapping: torch.Tensor) -> torch.Tensor:
    """Reference: rotate q and k, write rotated k and v into the paged cache; returns rotated q."""
    q, k = apply_rotary_ref(q, k, positions, cos_sin_cache)
    write_kv_ref(k, v, kv_cache, slot_mapping)
    return q


def rotary_and_write_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                        cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor,
                        slot_mapping: torch.Tensor) -> torch.Tensor:
    """RoPE fused with the KV-cache write (dispatcher); returns rotated q [T, Hq, D].

    q: [T, Hq, D], k/v: [T, Hk, D]; kv_cache: [2, num_blocks, block_size, Hk, D];
    slot_mapping: [T] (-1 = do not write).
    """
    return rotary_and_write_kv_ref(q, k, v, positions, cos_sin_cache, kv_cache, slot_mapping)
