"""Config presets for random checkpoints: real architectures' shapes, and tiny ones for tests.

Each preset is the config.json a hub checkpoint of that model carries (hub key style), minus the
token ids, which the random checkpoint's own tokenizer decides.
"""

from __future__ import annotations

import copy
from typing import Any

from kiln.errors import KilnError


def _llama(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, max_pos: int,
           theta: float, eps: float = 1e-5, rope_scaling: dict | None = None,
           tie: bool = False) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": max_pos,
            "rope_theta": theta, "rope_scaling": rope_scaling, "rms_norm_eps": eps,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": tie}


def _mistral(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, max_pos: int,
             theta: float, window: int | None) -> dict[str, Any]:
    return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": max_pos,
            "rope_theta": theta, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "sliding_window": window, "tie_word_embeddings": False}


def _qwen2(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, max_pos: int,
           theta: float, tie: bool) -> dict[str, Any]:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": max_pos,
            "rope_theta": theta, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "use_sliding_window": False, "sliding_window": max_pos, "max_window_layers": layers,
            "tie_word_embeddings": tie}


def _qwen3(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, vocab: int,
           max_pos: int, theta: float, tie: bool) -> dict[str, Any]:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": head_dim, "vocab_size": vocab,
            "max_position_embeddings": max_pos, "rope_theta": theta, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "attention_bias": False, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": layers, "tie_word_embeddings": tie}


def _llama3_scaling(factor: float, original: int) -> dict[str, Any]:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": original}


def _all_presets() -> dict[str, dict[str, Any]]:
    # Built on each call so that no caller can mutate a shared table.
    return {
        "llama-2-7b": _llama(4096, 11008, 32, 32, 32, 32000, 4096, 10000.0),
        "llama-3-8b": _llama(4096, 14336, 32, 32, 8, 128256, 8192, 500000.0),
        "llama-3.1-8b": _llama(4096, 14336, 32, 32, 8, 128256, 131072, 500000.0,
                               rope_scaling=_llama3_scaling(8.0, 8192)),
        "llama-3.1-70b": _llama(8192, 28672, 80, 64, 8, 128256, 131072, 500000.0,
                                rope_scaling=_llama3_scaling(8.0, 8192)),
        "llama-3.2-1b": _llama(2048, 8192, 16, 32, 8, 128256, 131072, 500000.0,
                               rope_scaling=_llama3_scaling(32.0, 8192), tie=True),
        "mistral-7b": _mistral(4096, 14336, 32, 32, 8, 32000, 32768, 10000.0, 4096),
        "qwen2.5-0.5b": _qwen2(896, 4864, 24, 14, 2, 151936, 32768, 1000000.0, tie=True),
        "qwen2.5-7b": _qwen2(3584, 18944, 28, 28, 4, 152064, 32768, 1000000.0, tie=False),
        "qwen3-8b": _qwen3(4096, 12288, 36, 32, 8, 128, 151936, 40960, 1000000.0, tie=False),
        "tiny-llama": _llama(64, 128, 2, 4, 2, 512, 512, 10000.0),
        "tiny-llama3": _llama(64, 128, 2, 4, 2, 512, 512, 500000.0,
                              rope_scaling=_llama3_scaling(8.0, 32)),
        "tiny-mistral": _mistral(64, 128, 2, 4, 2, 512, 512, 10000.0, 16),
        "tiny-qwen2": _qwen2(64, 128, 2, 4, 2, 512, 512, 1000000.0, tie=True),
        "tiny-qwen3": _qwen3(64, 128, 2, 4, 2, 32, 512, 512, 1000000.0, tie=False),
        # head_dim 128 (the fp8 decode kernels' shape), two query heads per kv head
        "tiny-llama-d128": _llama(256, 512, 2, 2, 1, 512, 1024, 500000.0),
        # the smallest widths the batch-1 int4 ring GEMV takes (K 2048 and 4096): GPU tests
        "tiny-llama-d2048": _llama(2048, 4096, 2, 16, 4, 512, 1024, 500000.0),
    }


def list_presets() -> list[str]:
    """Names accepted by write_random_model (real architectures first, then tiny test models)."""
    return list(_all_presets())


def preset_config(name: str) -> dict[str, Any]:
    """A fresh copy of a preset's config.json dict."""
    presets = _all_presets()
    if name not in presets:
        raise KilnError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return copy.deepcopy(presets[name])
