"""Quantize a loaded float model into the tensors of a quantized engine.

Per decoder layer the input-scaling schemes (SmoothQuant, AWQ) first rescale each Linear's input
channels and fold the inverse into the op that produces that input, so the float model computes
the same function with weights that quantize better:

- ``self_attn.qkv_proj``: folded into ``input_layernorm.weight``;
- ``mlp.gate_up_proj``: folded into ``post_attention_layernorm.weight``;
- ``mlp.down_proj``: folded into the ``up`` rows (and bias) of ``gate_up_proj``, since
  down's input is silu(gate) * up, linear in up;
- ``self_attn.o_proj``: its input is the attention output, channel (head h, d) a mix of the value
  rows (kv head of h, d). Scaling those ``v`` rows of ``qkv_proj`` (and bias) by 1 / t scales the
  channel (h, d) of every query head sharing that kv head, so an s shared within each group of
  query heads folds there exactly (``group_shared``). AWQ searches o_proj's s from the group's
  mean activation, and SmoothQuant averages its s over the group, so that both fold. The folded
  values' largest |v| is at most the float model's times max(1 / t), which
  ``QuantizedWeights.v_absmax_gain`` records for an fp8 KV cache's scales.

down_proj is handled before gate_up_proj so that gate_up is quantized with its up rows already
rescaled, and o_proj before qkv_proj for its v rows. The embeddings and norms stay in the model
dtype; so does the LM head, unless ``QuantConfig.lm_head`` names a scheme: "fp8" (fp8 W8A8 like
the fp8 scheme's layers), "int8-wo" or "int4-wo" (weight-only, rounded to nearest). A head tied to
the token embedding gets a quantized copy of the table of its own: the embedding stays a float
lookup, and the engine's head is no longer tied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.layers.linear import Linear
from kiln.quant.awq import awq_search
from kiln.quant.calibration import CalibrationStats
from kiln.quant.config import QuantConfig
from kiln.quant.fp8 import Fp8LinearMethod
from kiln.quant.int4 import Int4WeightOnlyLinearMethod, search_clip
from kiln.quant.int8 import Int8WeightOnlyLinearMethod
from kiln.quant.smoothquant import Int8SmoothQuantLinearMethod, smoothing_scales

# Order in which a layer's Linears are processed (see the module docstring).
LAYER_LINEARS = ("mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj")


@dataclass
class QuantizedWeights:
    """Engine tensors by kiln parameter name, and what the build chose (for engine.json)."""

    tensors: dict[str, torch.Tensor]
    runtime_input_scale: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: attention module name -> the factor bounding the layer's largest |v| (calibrated on the
    #: float model) once o_proj's scale is folded into its v rows: max(1 / s)
    v_absmax_gain: dict[str, float] = field(default_factory=dict)


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def group_shared(x: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """x [num_heads * head_dim] (per o_proj input channel) averaged over each group of query heads
    that share a kv head, and repeated back to every head of the group."""
    groups = x.reshape(attn.num_kv_heads, attn.num_heads // attn.num_kv_heads, attn.head_dim)
    return groups.mean(dim=1, keepdim=True).expand_as(groups).reshape(-1)


def _divide_rows(linear: Linear, start: int, t: torch.Tensor) -> None:
    """Divide output rows start .. start + len(t) of ``linear`` (weight and bias) by t."""
    w = linear.weight.data[start:start + t.numel()]
    w.copy_((w.float() / t[:, None].to(w.device)).to(w.dtype))
    if linear.bias is not None:
        b = linear.bias.data[start:start + t.numel()]
        b.copy_((b.float() / t.to(b.device)).to(b.dtype))


def fold_input_scale(model: nn.Module, prefix: str, s: torch.Tensor) -> bool:
    """Make Linear ``prefix`` see x / s: fold 1 / s into the op before it, multiply its columns by s.

    Returns False (and changes nothing) when no preceding op can absorb 1 / s: o_proj with an s
    not shared within each group of query heads (see group_shared).
    """
    modules = _modules(model)
    linear: Linear = modules[prefix]
    layer, _, name = prefix.partition(".self_attn.") if ".self_attn." in prefix else prefix.partition(".mlp.")
    with torch.no_grad():
        if name == "o_proj":
            attn = modules[f"{layer}.self_attn"]
            heads = s.reshape(attn.num_kv_heads, attn.num_heads // attn.num_kv_heads, attn.head_dim)
            t = heads[:, 0]
            if not torch.allclose(heads, t[:, None].expand_as(heads), rtol=1e-6, atol=0):
                return False
            _divide_rows(modules[f"{layer}.self_attn.qkv_proj"], attn.q_size + attn.kv_size, t.reshape(-1))
            norm = None
        elif name == "qkv_proj":
            norm = modules[f"{layer}.input_layernorm"].weight
        elif name == "gate_up_proj":
            norm = modules[f"{layer}.post_attention_layernorm"].weight
        elif name == "down_proj":
            gate_up: Linear = modules[f"{layer}.mlp.gate_up_proj"]
            _divide_rows(gate_up, gate_up.output_sizes[0], s)  # the up rows
            norm = None
        else:
            return False
        if norm is not None:
            norm.data.copy_((norm.float() / s.to(norm.device)).to(norm.dtype))
        w = linear.weight.data
        w.copy_((w.float() * s[None, :].to(w.device)).to(w.dtype))
    return True


def _smooth(model: nn.Module, i: int, name: str, absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s for Linear ``name`` of layer i (o_proj's averaged over each group of query
    heads, so that it folds into the v rows), folded into the model; returns s."""
    modules = _modules(model)
    prefix = f"layers.{i}.{name}"
    s = smoothing_scales(absmax, modules[prefix].weight, alpha)
    if name == "self_attn.o_proj":
        s = group_shared(s, modules[f"layers.{i}.self_attn"])
    if not fold_input_scale(model, prefix, s):
        raise KilnError(f"SmoothQuant could not fold the scale of {prefix}")
    return s


def _v_gain(s: torch.Tensor) -> float:
    """The factor bounding the layer's largest |v| once o_proj's s is folded into the v rows,
    max(1 / s): above 1 it can grow, below 1 it surely shrinks (a tighter fp8 v_scale)."""
    return float((1.0 / s).max())


def smooth_model(model: nn.Module, stats: CalibrationStats, alpha: float = 0.5
                 ) -> dict[str, torch.Tensor]:
    """Apply SmoothQuant's smoothing to every Linear of ``model`` in place; returns the s."""
    chosen: dict[str, torch.Tensor] = {}
    for i in range(len(model.layers)):
        for name in LAYER_LINEARS:
            prefix = f"layers.{i}.{name}"
            chosen[prefix] = _smooth(model, i, name, stats.linears[prefix].absmax, alpha)
    return chosen


def _require_stats(stats: CalibrationStats | None, prefix: str):
    if stats is None or prefix not in stats.linears:
        raise KilnError(f"no calibration statistics for {prefix}; this scheme needs calibration")
    return stats.linears[prefix]


def quantize_model(model: nn.Module, config: QuantConfig, stats: CalibrationStats | None = None,
                   storage_dtype: torch.dtype | None = None,
                   progress: Callable[[int], None] | None = None) -> QuantizedWeights:
    """Process a float kiln model into engine tensors for ``config.scheme`` (the model is modified).

    ``storage_dtype``: dtype of every tensor that stays in floating point (norms, embeddings, biases,
    input scales); default the model's. ``progress(n)`` is called after each decoder layer.
    """
    dtype = storage_dtype or model.embed_tokens.weight.dtype
    out = QuantizedWeights(tensors={})
    scheme = config.scheme
    alphas: dict[str, float] = {}
    gains: list[float] = []
    # KILN_AWQ_FOLD_O_PROJ=0: o_proj's AWQ scale searched per channel and kept as a run-time
    # input_scale, as before 2026-12-06 (for a same-machine A/B of the fold)
    fold_o_proj = os.environ.get("KILN_AWQ_FOLD_O_PROJ", "1") == "1"
    for i in range(len(model.layers)):
        for name in LAYER_LINEARS:
            prefix = f"layers.{i}.{name}"
            linear: Linear = _modules(model)[prefix]
            if scheme == "none":
                continue
            input_scale = None
            folded = None  # the s folded into the op before this Linear
            clip: torch.Tensor | float = 1.0
            if scheme == "int8-sq":
                folded = _smooth(model, i, name, _require_stats(stats, prefix).absmax,
                                 config.smoothquant_alpha)
            if scheme == "int4-wo":
                st = _require_stats(stats, prefix)
                rows = st.sample()
                absmean = st.absmean
                fold = name != "self_attn.o_proj" or fold_o_proj
                if name == "self_attn.o_proj" and fold:  # an s that folds into the v rows
                    absmean = group_shared(absmean, _modules(model)[f"layers.{i}.self_attn"])
                result = awq_search(linear.weight, rows, absmean, config.group_size, config.awq_grid)
                alphas[prefix] = result.alpha
                gains.append(result.error / max(result.rtn_error, 1e-30))
                s = result.scales
                if fold and fold_input_scale(model, prefix, s):
                    folded = s
                else:
                    with torch.no_grad():
                        w = linear.weight.data
                        w.copy_((w.float() * s[None, :].to(w.device)).to(w.dtype))
                    input_scale = (1.0 / s).to(dtype)
                    out.runtime_input_scale.append(prefix)
                if config.clip_search:
                    clip = search_clip(linear.weight, rows / s[None, :].to(rows.device), config.group_size)
            if folded is not None and name == "self_attn.o_proj":
                out.v_absmax_gain[f"layers.{i}.self_attn"] = _v_gain(folded)
            out.tensors.update({f"{prefix}.{k}": v.contiguous()
                                for k, v in _quantize_linear(linear, config, clip).items()})
            if linear.bias is not None:
                out.tensors[f"{prefix}.bias"] = linear.bias.detach().to(dtype).contiguous()
            if input_scale is not None:
                out.tensors[f"{prefix}.input_scale"] = input_scale.contiguous()
        if progress is not None:
            progress(i + 1)
    quantized_prefixes = ({f"layers.{i}.{n}" for i in range(len(model.layers)) for n in LAYER_LINEARS}
                          if scheme != "none" else set())
    if config.lm_head != "none":
        # (a tied head's table is the embedding's, which stays below as it is)
        out.tensors.update({f"lm_head.{k}": v.contiguous()
                            for k, v in _quantize_head(model.lm_head.table().detach(), config).items()})
        quantized_prefixes.add("lm_head")
    for pname, p in model.named_parameters():
        owner = pname.rpartition(".")[0]
        if owner in quantized_prefixes:
            continue
        out.tensors[pname] = p.detach().to(dtype).contiguous()
    if scheme == "int4-wo":
        out.details = {"awq_alpha": alphas,
                       "awq_error_vs_rtn_mean": float(sum(gains) / max(len(gains), 1))}
    elif scheme == "int8-sq":
        out.details = {"smoothed": "qkv_proj, gate_up_proj, down_proj, o_proj (folded; o_proj's s "
                                   "shared within each group of query heads)"}
    return out


def _quantize_head(w: torch.Tensor, config: QuantConfig) -> dict[str, torch.Tensor]:
    """The LM head's engine tensors under config.lm_head (no calibration: the int4 groups are
    rounded to nearest, unclipped)."""
    if config.lm_head == "fp8":
        return Fp8LinearMethod.quantize(w)
    if config.lm_head == "int8-wo":
        return Int8WeightOnlyLinearMethod.quantize(w)
    return Int4WeightOnlyLinearMethod(config.group_size).quantize(w, 1.0)


def _quantize_linear(linear: Linear, config: QuantConfig, clip) -> dict[str, torch.Tensor]:
    w = linear.weight.detach()
    if config.scheme == "fp8":
        return Fp8LinearMethod.quantize(w)
    if config.scheme == "int8-wo":
        return Int8WeightOnlyLinearMethod.quantize(w)
    if config.scheme == "int8-sq":
        return Int8SmoothQuantLinearMethod.quantize(w)
    return Int4WeightOnlyLinearMethod(config.group_size).quantize(w, clip)
