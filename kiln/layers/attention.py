"""Self-attention over the paged KV cache: fused qkv -> (q/k norm) -> RoPE + cache write ->
attention -> o_proj."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.kernels import mma_gemv, use_triton
from kiln.kernels.attention import (decode_rope_possible, decode_signals_ok, paged_attention,
                                    wants_fresh_kv)
from kiln.kernels.attention_ref import is_fp8_kv_cache
from kiln.kernels.dataflow import FlagSlot
from kiln.kernels.decode_attention import DecodeRope, rope_in_decode_enabled
from kiln.kernels.qmm_common import SMALL_M
from kiln.kernels.quant_act import quantized_rows_buffers
from kiln.kernels.quant_matmul import fp8_linear
from kiln.layers.forward_context import AttentionMetadata
from kiln.layers.linear import Linear, UnquantizedLinearMethod
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

    def flow_slot(self, flags, index: int) -> FlagSlot:
        """This layer's slot ``index`` of a dataflow.RowFlags laid out for its decode attention:
        one flag per token and kv head, each covering the kv head's query heads."""
        return flags.slot(index, granule=self.q_size // self.num_kv_heads,
                          row_stride=self.num_kv_heads)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, rows: torch.Tensor | None = None,
                flow: FlagSlot | None = None, qkv_flow: FlagSlot | None = None,
                x_flow: FlagSlot | None = None, o_flow: FlagSlot | None = None) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]; writes this layer's K/V of the T tokens into ``kv_cache``.

        ``rows`` (int64 indices into the T tokens): only those rows go through o_proj, and the
        result is [len(rows), hidden]; every token's K/V is still written. With no rows the
        projection is skipped. ``flow`` (a FlagSlot from flow_slot, see kiln.kernels.dataflow):
        decode rows of an unquantized o_proj on the tensor-core GEMV read each token's head
        groups as the attention marks them ready, not after the whole attention launch: the
        same bits. ``qkv_flow`` (a FlagSlot of dataflow.RowFlags' default layout): with RoPE in
        the decode kernel (KILN_ATTN_ROPE=1), the decode attention reads q, k and v as an
        unquantized qkv_proj on the tensor-core GEMV marks them ready. ``x_flow`` (armed in this
        forward by the RMSNorm before, one flag a row): such a qkv_proj reads hidden's rows as the
        norm marks them ready. ``o_flow`` (a FlagSlot of the default layout): such an o_proj
        marks its output ready for the RMSNorm after it, and arms the slot."""
        num_tokens = hidden.shape[0]
        tc_qkv = ((qkv_flow is not None or x_flow is not None)
                  and isinstance(hidden, torch.Tensor) and _tc_linear_ok(self.qkv_proj, hidden))
        signal = qkv_flow if qkv_flow is not None and self._qkv_signals(hidden, meta) else None
        wait_x = x_flow if x_flow is not None and x_flow.armed and tc_qkv else None
        if tc_qkv and (signal is not None or wait_x is not None):
            qkv = mma_gemv.tc_gemv(hidden, None, self.qkv_proj.weight, None, self.qkv_proj.bias,
                                   hidden.dtype, signal=signal.arm() if signal else None,
                                   wait=wait_x)
        elif (signal is not None and not isinstance(hidden, torch.Tensor)  # QuantizedRows
              and getattr(self.qkv_proj.method, "scheme", None) == "fp8"):
            # fp8 W8A8 rows its norm quantized: the tensor-core GEMV arms the slot if it signals
            qkv = fp8_linear(hidden, self.qkv_proj.weight, self.qkv_proj.weight_scale,
                             self.qkv_proj.bias, signal=signal)
        else:
            qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        # Fresh prompts' attention can read their rotated keys from here instead of the cache
        # (an fp8 cache's: the codes of keys and values, in float16).
        k_out = v_out = None
        if wants_fresh_kv(q, kv_cache, meta, self.sliding_window):
            if is_fp8_kv_cache(kv_cache):
                k_out = torch.empty(k.shape, dtype=torch.float16, device=k.device)
                v_out = torch.empty(v.shape, dtype=torch.float16, device=v.device)
            else:
                k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        rope = None
        if k_out is None and self._rope_in_decode(q, k, v, kv_cache, meta):
            # the decode kernel rotates q and k and writes the step's K/V itself
            rope = DecodeRope(positions, meta.slot_mapping, self._rotary[0].cos_sin_cache, k, v,
                              self.k_scale, self.v_scale)
        else:
            q = self._rotary[0](positions, q, k, v, kv_cache, meta.slot_mapping, self.k_scale,
                                self.v_scale, k_out, v_out)
        # the attention reads q, k and v as qkv_proj marks them ready (only with RoPE in it)
        waits = dict(wait=signal, wait_cols=(0, self.q_size, self.q_size + self.kv_size)
                     ) if signal is not None and signal.armed and rope is not None else {}
        if flow is not None and rows is None and self._flows(q, kv_cache, meta):
            out = paged_attention(q, kv_cache, meta, self.scale, self.sliding_window,
                                  self.k_scale, self.v_scale, signal=flow.arm(), rope=rope,
                                  **waits)
            out2 = out.reshape(num_tokens, self.q_size)
            return mma_gemv.tc_gemv(out2, None, self.o_proj.weight, None, self.o_proj.bias,
                                    out.dtype, wait=flow, signal=self._o_signal(o_flow, out2))
        out = paged_attention(q, kv_cache, meta, self.scale, self.sliding_window, self.k_scale,
                              self.v_scale,
                              None if k_out is None else (k_out, v if v_out is None else v_out),
                              quant_dtype=self.quant_dtype, rope=rope, **waits)
        if rows is not None and rows.shape[0] == 0:
            return hidden.new_empty((0, hidden.shape[1]))
        if self.quant_dtype is not None:  # QuantizedRows: per token, for an fp8 W8A8 o_proj
            if rows is not None:
                # into buffers padded as the producers pad them (cuBLAS takes 16-row multiples)
                m = rows.shape[0]
                codes, scales = quantized_rows_buffers(m, out.q.shape[1], out.q.dtype, out.q.device)
                torch.index_select(out.q, 0, rows, out=codes[:m])
                torch.index_select(out.scale, 0, rows, out=scales[:m])
                out = dataclasses.replace(out, q=codes, scale=scales, m=m,
                                          shape=(m, *out.shape[1:]))
        else:
            out = out.reshape(num_tokens, self.q_size)
            if rows is not None:
                out = out.index_select(0, rows)
            elif (o_signal := self._o_signal(o_flow, out)) is not None:
                return mma_gemv.tc_gemv(out, None, self.o_proj.weight, None, self.o_proj.bias,
                                        out.dtype, signal=o_signal)
        return self.o_proj(out)

    def _o_signal(self, o_flow: FlagSlot | None, x2: torch.Tensor) -> FlagSlot | None:
        """o_flow, armed, where o_proj over rows x2 can signal into it (a tensor-core GEMV that
        sums its splits itself), else None."""
        if (o_flow is None or not _tc_linear_ok(self.o_proj, x2)
                or not mma_gemv.tc_gemv_signals(self.o_proj.out_features, x2.device)):
            return None
        return o_flow.arm()

    def _flows(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Whether these decode rows take the row-granular attention -> o_proj path: an
        unquantized o_proj of q's dtype on the tensor-core GEMV (the path Linear would take),
        no quantized attention output, and a decode launch that can signal."""
        weight = self.o_proj.weight if isinstance(self.o_proj.method,
                                                  UnquantizedLinearMethod) else None
        return (weight is not None and self.quant_dtype is None and use_triton(q)
                and mma_gemv.tc_gemv_enabled("float") and 0 < q.shape[0] <= SMALL_M
                and weight.dtype == q.dtype and weight.dtype in (torch.float16, torch.bfloat16)
                and self.q_size % 32 == 0 and decode_signals_ok(q, kv_cache, meta))

    def _rope_in_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        kv_cache: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Whether this decode batch's attention applies RoPE and writes the step's K/V itself
        (KILN_ATTN_ROPE=1; one token per sequence on the Triton decode kernel, see
        decode_attention.decode_rope_ok)."""
        return rope_in_decode_enabled() and decode_rope_possible(
            q, k, v, kv_cache, meta, self._rotary[0].cos_sin_cache)

    def _qkv_signals(self, hidden: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Whether qkv_proj (on the tensor-core GEMV, _tc_linear_ok) marks its output ready for
        the decode attention (see forward's qkv_flow): one token per sequence, a GEMV that can
        signal, no q/k norm between them, and RoPE in the decode kernel."""
        return (self.q_norm is None and rope_in_decode_enabled()
                and meta.max_query_len == 1 and meta.num_seqs == hidden.shape[0]
                and mma_gemv.tc_gemv_signals(self.qkv_proj.out_features, hidden.device))


def _tc_linear_ok(linear: Linear, x: torch.Tensor) -> bool:
    """Whether rows x [T, in] of an unquantized linear of x's dtype go to the tensor-core GEMV
    (the path Linear itself takes for them), which row-granular dependencies need."""
    return (isinstance(linear.method, UnquantizedLinearMethod) and x.dim() == 2
            and 0 < x.shape[0] <= SMALL_M and use_triton(x) and mma_gemv.tc_gemv_enabled("float")
            and mma_gemv.tc_gemv_ok(x, linear.weight))
