"""Self-attention over the paged KV cache: fused qkv -> (q/k norm) -> RoPE + cache write ->
attention -> o_proj."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.kernels.attention import (decode_rope_possible, fresh_kv_possible, paged_attention,
                                    wants_fresh_kv)
from kiln.kernels.attention_ref import is_fp8_kv_cache
from kiln.kernels.decode_attention import DecodeRope, rope_in_decode_enabled
from kiln.kernels.quant_act import quantized_rows_buffers
from kiln.layers.forward_context import AttentionMetadata
from kiln.layers.linear import Linear
from kiln.layers.norm import RMSNorm
from kiln.layers.rotary import RotaryEmbedding


class PagedSelfAttention(nn.Module):
    """Grouped-query self-attention of one decoder layer.

    ``qk_norm`` adds a per-head RMSNorm on q and k before RoPE (Qwen3). ``sliding_window`` limits
    each query to the last that-many positions, itself included (Mistral).

    ``k_scale``/``v_scale`` (floats, 1.0 until ``set_kv_cache_scales``) scale this layer's K/V in
    an fp8 (float8_e4m3fn) KV cache; a cache of any other dtype ignores them.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rotary: RotaryEmbedding, *, qkv_bias: bool, o_bias: bool, qk_norm: bool,
                 rms_norm_eps: float, sliding_window: int | None, dtype: torch.dtype,
                 device: torch.device | str):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        self.scale = head_dim ** -0.5
        self.sliding_window = sliding_window
        self.qkv_proj = Linear(hidden_size, (self.q_size, self.kv_size, self.kv_size), qkv_bias,
                               dtype, device)
        self.o_proj = Linear(self.q_size, hidden_size, o_bias, dtype, device)
        self.q_norm = RMSNorm(head_dim, rms_norm_eps, dtype, device) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, rms_norm_eps, dtype, device) if qk_norm else None
        # Shared by all layers; a list keeps it out of this module's children (one cache, not N).
        self._rotary = [rotary]
        # Plain floats, fixed before CUDA graphs are captured (they are baked into the launches).
        self.k_scale = 1.0
        self.v_scale = 1.0
        # float8_e4m3fn when o_proj is an fp8 W8A8 linear and the attention quantizes its input
        # (LlamaFamilyModel.quantize_in_producers); None: o_proj quantizes for itself.
        self.quant_dtype: torch.dtype | None = None

    def set_kv_cache_scales(self, k_scale: float, v_scale: float) -> None:
        """Set the fp8 KV-cache scales of this layer (cached value = K / k_scale, V / v_scale)."""
        for name, value in (("k_scale", k_scale), ("v_scale", v_scale)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise KilnError(f"KV cache {name} must be a positive finite number, got {value!r}")
        self.k_scale = float(k_scale)
        self.v_scale = float(v_scale)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor | None, kv_cache: torch.Tensor,
                meta: AttentionMetadata, rows: torch.Tensor | None = None,
                qkv: torch.Tensor | None = None) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]; writes this layer's K/V of the T tokens into ``kv_cache``.

        ``rows`` (int64 indices into the T tokens): only those rows go through o_proj, and the
        result is [len(rows), hidden]; every token's K/V is still written. With no rows the
        projection is skipped. ``qkv``: qkv_proj's output, computed already by the caller (then
        hidden is not read)."""
        q, k, v = self._split_heads(self.qkv_proj(hidden) if qkv is None else qkv)
        # Fresh prompts' attention can read their rotated keys from here instead of the cache.
        keep_fresh = wants_fresh_kv(q, kv_cache, meta, self.sliding_window)
        rope = fresh_kv = None
        if not keep_fresh and self._rope_in_decode(q, k, v, kv_cache, meta):
            # the decode kernel rotates q and k and writes the step's K/V itself
            rope = DecodeRope(positions, meta.slot_mapping, self._rotary[0].cos_sin_cache, k, v,
                              self.k_scale, self.v_scale)
        else:
            q, fresh_kv = self._rotate(positions, q, k, v, kv_cache, meta.slot_mapping, keep_fresh)
        out = paged_attention(q, kv_cache, meta, self.scale, self.sliding_window, self.k_scale,
                              self.v_scale, fresh_kv, quant_dtype=self.quant_dtype, rope=rope)
        return self.project_out(out, rows)

    def rotated_qkv(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, q_out: torch.Tensor, k_out: torch.Tensor | None,
                    v_out: torch.Tensor | None) -> bool:
        """forward's part before the attention, for any batch (the prefill graphs capture it):
        qkv_proj, RoPE and the cache write of every token (slot -1: none), the rotated q into
        ``q_out`` [T, Hq, D]. Where this layer's fresh prompts may read their keys and values
        from the step's tensors (fresh_kv_possible) and k_out and v_out [T, Hk, D] are given,
        they receive them as ``attend`` takes them (an fp8 cache's codes, in float16), and the
        result is True."""
        q, k, v = self._split_heads(self.qkv_proj(hidden))
        keep = k_out is not None and fresh_kv_possible(q, kv_cache, self.sliding_window)
        fp8 = is_fp8_kv_cache(kv_cache)
        self._rotary[0](positions, q, k, v, kv_cache, slot_mapping, self.k_scale, self.v_scale,
                        k_out if keep else None, v_out if keep and fp8 else None, q_out=q_out)
        if keep and not fp8:
            v_out.copy_(v)
        return keep

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
               fresh_kv: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor) -> None:
        """The attention of rotated q (its K/V written already) into ``out`` (q's shape): what
        the prefill graphs run between their captured parts, with the step's own metadata."""
        if fresh_kv is not None and not wants_fresh_kv(q, kv_cache, meta, self.sliding_window):
            fresh_kv = None
        paged_attention(q, kv_cache, meta, self.scale, self.sliding_window, self.k_scale,
                        self.v_scale, fresh_kv, out=out)

    def project_out(self, out, rows: torch.Tensor | None = None) -> torch.Tensor:
        """o_proj of the attention's output (a [T, Hq, D] tensor, or its rows quantized per token:
        QuantizedRows), of ``rows`` alone when given."""
        if rows is not None and rows.shape[0] == 0:
            return torch.empty((0, self.o_proj.out_features), dtype=out.dtype, device=out.device)
        if isinstance(out, torch.Tensor):
            out = out.reshape(out.shape[0], self.q_size)
            if rows is not None:
                out = out.index_select(0, rows)
        elif rows is not None:  # QuantizedRows: per token, for an fp8 W8A8 o_proj
            # into buffers padded as the producers pad them (cuBLAS takes 16-row multiples)
            m = rows.shape[0]
            codes, scales = quantized_rows_buffers(m, out.q.shape[1], out.q.dtype, out.q.device)
            torch.index_select(out.q, 0, rows, out=codes[:m])
            torch.index_select(out.scale, 0, rows, out=scales[:m])
            out = dataclasses.replace(out, q=codes, scale=scales, m=m, shape=(m, *out.shape[1:]))
        return self.o_proj(out)

    def _split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k and v [T, Hk, D] of qkv_proj's output, q and k normed (Qwen3)."""
        num_tokens = qkv.shape[0]
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        return q, k, v

    def _rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, slot_mapping: torch.Tensor, keep_fresh: bool
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """RoPE and the cache write; with keep_fresh also the rotated keys (an fp8 cache's: the
        codes of keys and values, in float16), returned as paged_attention's fresh_kv."""
        k_out = v_out = None
        if keep_fresh:
            if is_fp8_kv_cache(kv_cache):
                k_out = torch.empty(k.shape, dtype=torch.float16, device=k.device)
                v_out = torch.empty(v.shape, dtype=torch.float16, device=v.device)
            else:
                k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        q = self._rotary[0](positions, q, k, v, kv_cache, slot_mapping, self.k_scale,
                            self.v_scale, k_out, v_out)
        return q, None if k_out is None else (k_out, v if v_out is None else v_out)

    def _rope_in_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        kv_cache: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Whether this decode batch's attention applies RoPE and writes the step's K/V itself
        (KILN_ATTN_ROPE, on by default; one token per sequence on the Triton decode kernel, see
        decode_attention.decode_rope_ok)."""
        return rope_in_decode_enabled() and decode_rope_possible(
            q, k, v, kv_cache, meta, self._rotary[0].cos_sin_cache)
