"""The Llama-family decoder (Llama 2/3/3.x, Mistral, Qwen2/2.5, Qwen3), one class driven by ModelArgs.

The forward takes one flat sequence of new tokens from any number of sequences, no padding and no
batch dimension, and reads/writes a paged KV cache described by AttentionMetadata. Parameter names
mirror the HF checkpoint's (without the ``model.`` prefix), except that q/k/v live fused in
``qkv_proj`` and gate/up in ``gate_up_proj``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.layers.activation import SiluAndMul
from kiln.layers.attention import PagedSelfAttention
from kiln.layers.embedding import LMHead, VocabEmbedding
from kiln.layers.forward_context import AttentionMetadata
from kiln.layers.linear import Linear, LinearMethod
from kiln.layers.norm import RMSNorm
from kiln.layers.rotary import RotaryEmbedding
from kiln.models.args import ModelArgs

# (prefix such as "layers.0.self_attn.qkv_proj", or "lm_head", in_features, output_sizes) -> a
# LinearMethod for that layer, or None to keep it unquantized.
LinearMethodFactory = Callable[[str, int, tuple[int, ...]], LinearMethod | None]


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one projection."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str):
        super().__init__()
        self.gate_up_proj = Linear(hidden_size, (intermediate_size, intermediate_size), bias, dtype,
                                   device)
        self.act = SiluAndMul()
        self.down_proj = Linear(intermediate_size, hidden_size, bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]."""
        return self.down_proj(self.act(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    """Pre-norm attention block then pre-norm MLP block, with the residual carried separately."""

    def __init__(self, args: ModelArgs, layer_index: int, rotary: RotaryEmbedding,
                 dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        eps = args.rms_norm_eps
        self.input_layernorm = RMSNorm(args.hidden_size, eps, dtype, device)
        self.self_attn = PagedSelfAttention(
            args.hidden_size, args.num_attention_heads, args.num_key_value_heads, args.head_dim,
            rotary, qkv_bias=args.qkv_bias, o_bias=args.o_bias, qk_norm=args.qk_norm,
            rms_norm_eps=eps, sliding_window=args.layer_sliding_windows[layer_index], dtype=dtype,
            device=device)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps, dtype, device)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.mlp_bias, dtype, device)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                kv_cache: torch.Tensor, meta: AttentionMetadata, rows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's MLP output, the residual stream before it is added).

        The add is deferred into the next norm so that it fuses with it. ``rows``: after the
        attention (which writes every token's K/V), only those rows go on (see
        LlamaFamilyModel.forward).
        """
        if self._ring_fused(hidden, rows):
            return self._ring_fused_forward(positions, hidden, residual, kv_cache, meta)
        hidden, residual = self._input_norm(hidden, residual)
        return self._mlp_block(self.self_attn(positions, hidden, kv_cache, meta, rows), residual,
                               rows)

    def before_attention(self, positions: torch.Tensor, hidden: torch.Tensor,
                         residual: torch.Tensor | None, kv_cache: torch.Tensor,
                         slot_mapping: torch.Tensor, q_out: torch.Tensor,
                         k_out: torch.Tensor | None, v_out: torch.Tensor | None
                         ) -> tuple[bool, torch.Tensor]:
        """forward up to the attention, which does not depend on how the tokens form sequences
        (the prefill graphs capture it): (whether k_out and v_out hold the fresh keys and
        values, the residual); see PagedSelfAttention.rotated_qkv."""
        hidden, residual = self._input_norm(hidden, residual)
        fresh = self.self_attn.rotated_qkv(positions, hidden, kv_cache, slot_mapping, q_out, k_out,
                                           v_out)
        return fresh, residual

    def after_attention(self, attn: torch.Tensor, residual: torch.Tensor,
                        rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """forward from the attention's output [T, Hq, D] on: o_proj, the post-attention norm and
        the MLP (of ``rows`` alone when given)."""
        return self._mlp_block(self.self_attn.project_out(attn, rows), residual, rows)

    def _input_norm(self, hidden: torch.Tensor, residual: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self.input_layernorm(hidden), hidden
        return self.input_layernorm(hidden, residual)

    def _mlp_block(self, hidden: torch.Tensor, residual: torch.Tensor,
                   rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if rows is not None:
            residual = residual.index_select(0, rows)
            if rows.shape[0] == 0:
                return hidden, residual
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual

    def _ring_fused(self, hidden: torch.Tensor, rows: torch.Tensor | None) -> bool:
        """Whether this step's layer runs as ring GEMVs with the norms and SiLU-mul in them
        (KILN_RING_GEMV=fused): one row, no row selection, unquantized float layers and norms
        the ring GEMV takes (kiln.kernels.ring_gemv)."""
        if rows is not None or hidden.shape[0] != 1 or not hidden.is_cuda:
            return False
        from kiln.kernels import ring_gemv as rg
        from kiln.layers.linear import UnquantizedLinearMethod
        if not rg.ring_fused_enabled():
            return False
        if (self.input_layernorm.quant_dtype is not None
                or self.post_attention_layernorm.quant_dtype is not None):
            return False
        linears = (self.self_attn.qkv_proj, self.mlp.gate_up_proj, self.mlp.down_proj)
        return all(type(lin.method) is UnquantizedLinearMethod and rg.ring_weight_ok(hidden, lin.weight)
                   for lin in linears)

    def _ring_fused_forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                            residual: torch.Tensor | None, kv_cache: torch.Tensor,
                            meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's result, with the input norm (and the residual add) computed by qkv_proj's
        GEMV, the post-attention norm by gate_up_proj's and SiLU-mul by down_proj's."""
        from kiln.kernels import ring_gemv as rg
        attn, mlp = self.self_attn, self.mlp
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        qkv, summed = rg.ring_gemv_norm(hidden, norm1.weight, norm1.eps, attn.qkv_proj.weight,
                                        attn.qkv_proj.bias, residual)
        residual = hidden if residual is None else summed
        hidden = attn(positions, None, kv_cache, meta, None, qkv=qkv)
        gate_up, residual = rg.ring_gemv_norm(hidden, norm2.weight, norm2.eps,
                                              mlp.gate_up_proj.weight, mlp.gate_up_proj.bias,
                                              residual)
        return rg.ring_gemv_silu(gate_up, mlp.down_proj.weight, mlp.down_proj.bias), residual


class LlamaFamilyModel(nn.Module):
    """A Llama-family causal LM over a paged KV cache.

    ``model(input_ids [T], positions [T], kv_caches, meta) -> hidden [T, H]``, then
    ``model.compute_logits(hidden_rows [N, H]) -> [N, V] float32``. ``kv_caches[i]`` is layer i's
    cache [2, num_blocks, block_size, num_key_value_heads, head_dim], allocated by the caller.
    Parameters are allocated uninitialised: load weights with kiln.models.loader.

    ``linear_method_factory`` (optional) picks the LinearMethod of every attention and MLP Linear
    by its parameter prefix (quantized engines, see kiln.build); the embeddings and the LM head
    always stay unquantized.
    """

    # Checkpoint projection name -> (fused layer name, shard index).
    packed_modules = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, args: ModelArgs, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu",
                 linear_method_factory: LinearMethodFactory | None = None):
        super().__init__()
        self.args = args
        self.rotary = RotaryEmbedding(args.head_dim, args.max_position_embeddings, args.rope, device)
        self.embed_tokens = VocabEmbedding(args.vocab_size, args.hidden_size, dtype, device)
        self.layers = nn.ModuleList()
        for i in range(args.num_hidden_layers):
            layer = DecoderLayer(args, i, self.rotary, dtype, device)
            if linear_method_factory is not None:
                # Swapped layer by layer, so at most one layer's unquantized weights exist at once.
                _set_linear_methods(layer, f"layers.{i}", linear_method_factory, dtype, device)
            self.layers.append(layer)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)
        head_method = (linear_method_factory("lm_head", args.hidden_size, (args.vocab_size,))
                       if linear_method_factory is not None else None)
        self.lm_head = LMHead(args.vocab_size, args.hidden_size, dtype, device,
                              tied_to=self.embed_tokens if args.tie_word_embeddings else None,
                              method=head_method)

    def quantize_in_producers(self, enable: bool = True) -> int:
        """Let the modules whose only reader is an fp8 W8A8 linear (the input norm before qkv_proj,
        the attention before o_proj, the post-attention norm before gate_up_proj, SiLU-mul before
        down_proj) quantize their output per token in their own kernel, which saves the linear's
        quantization launch (the attention: in decode steps whose kernel merges its partitions).
        Returns how many do so; ``enable=False`` undoes it."""
        from kiln.kernels.decode_attention import quant_out_enabled

        count = 0
        for layer in self.layers:
            # (producer, its reader, whether this producer may quantize: the attention only
            # under KILN_ATTN_QUANT_OUT)
            for producer, linear, allowed in (
                    (layer.input_layernorm, layer.self_attn.qkv_proj, True),
                    (layer.self_attn, layer.self_attn.o_proj, quant_out_enabled()),
                    (layer.post_attention_layernorm, layer.mlp.gate_up_proj, True),
                    (layer.mlp.act, layer.mlp.down_proj, True)):
                fp8 = enable and allowed and getattr(linear.method, "scheme", None) == "fp8"
                producer.quant_dtype = torch.float8_e4m3fn if fp8 else None
                count += fp8
        return count

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states [T, H] of the T new tokens; writes their K/V into ``kv_caches``.

        ``rows`` (int64 indices into the T tokens, e.g. the rows whose logits are sampled):
        returns only those rows' hidden states, [len(rows), H]. The last layer then runs
        o_proj and the MLP on those rows alone, after its attention has written every token's
        K/V; the other rows' outputs would only feed logits nobody reads. Every operation past
        the attention is row by row, so the rows are the full computation's up to the GEMMs'
        own rounding at a different row count.
        """
        hidden = self.embed_tokens(input_ids)
        residual = None
        last = len(self.layers) - 1
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches, strict=True)):
            hidden, residual = layer(positions, hidden, residual, kv_cache, meta,
                                     rows if i == last else None)
        return self.final_norm(hidden, residual)

    def final_norm(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The last layer's output and residual -> the final-norm hidden rows (none stay none)."""
        if hidden.shape[0] == 0:
            return hidden
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, H] hidden rows (only those that are sampled) -> [N, V] float32 logits (into
        ``out`` when given)."""
        return self.lm_head(hidden, out)

    def set_kv_cache_scales(self, scales: Sequence[tuple[float, float]]
                            | Mapping[str, Mapping[str, float]]) -> None:
        """Per-layer fp8 KV-cache scales: one (k_scale, v_scale) per layer, in layer order, or
        engine.json's ``kv_cache.scales`` ({"layers.<i>.self_attn": {"k_scale", "v_scale"}}).

        Call before CUDA graphs are captured. Used only with a float8_e4m3fn KV cache.
        """
        if isinstance(scales, Mapping):
            names = [f"layers.{i}.self_attn" for i in range(len(self.layers))]
            if set(scales) != set(names):
                raise KilnError(f"KV cache scales name layers {sorted(scales)}, but the model has "
                                f"{names}; rebuild the engine from this model")
            scales = [(scales[n]["k_scale"], scales[n]["v_scale"]) for n in names]
        if len(scales) != len(self.layers):
            raise KilnError(f"got KV cache scales for {len(scales)} layers, the model has "
                            f"{len(self.layers)}")
        for layer, (k_scale, v_scale) in zip(self.layers, scales):
            layer.self_attn.set_kv_cache_scales(k_scale, v_scale)


def _set_linear_methods(layer: nn.Module, prefix: str, factory: LinearMethodFactory,
                        dtype: torch.dtype, device: torch.device | str) -> None:
    """Give each Linear of ``layer`` the method ``factory`` chooses for it (None keeps it as is)."""
    for name, module in layer.named_modules():
        if isinstance(module, Linear):
            method = factory(f"{prefix}.{name}", module.in_features, module.output_sizes)
            if method is not None:
                module.set_method(method, dtype, device)
