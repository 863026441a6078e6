"""ModelArgs normalisation and the RoPE tables, checked against transformers' own computation."""

from __future__ import annotations

import pytest
import torch

from kiln.errors import KilnError
from kiln.layers.rotary import RopeConfig, build_cos_sin_cache, inverse_frequencies
from kiln.models.args import ModelArgs
from kiln.models.registry import resolve_model_class, supported_architectures
from model_helpers import hf_config

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 500000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("kind", list(ROPES))
def test_rope_tables_equal_transformers(kind):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config("llama", hidden_size=128, num_attention_heads=4, rope_parameters=ROPES[kind],
                       max_position_embeddings=512)
    hf_rope = LlamaRotaryEmbedding(config)
    args = ModelArgs.from_hf_config(config.to_dict())
    assert args.rope.rope_type == kind
    assert torch.equal(inverse_frequencies(args.head_dim, args.rope), hf_rope.inv_freq)
    positions = torch.arange(512)[None]
    cos, sin = hf_rope(torch.zeros(1, dtype=torch.float32), positions)
    cache = build_cos_sin_cache(args.head_dim, 512, args.rope)
    half = args.head_dim // 2
    torch.testing.assert_close(cache[:, :half], cos[0, :, :half], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache[:, half:], sin[0, :, :half], rtol=0, atol=1e-6)


def test_llama3_scaling_changes_low_frequencies_only():
    plain = inverse_frequencies(128, RopeConfig(theta=500000.0))
    scaled = inverse_frequencies(128, RopeConfig("llama3", 500000.0, 8.0, 1.0, 4.0, 8192))
    assert torch.equal(scaled[:10], plain[:10])  # short wavelengths kept
    torch.testing.assert_close(scaled[-5:], plain[-5:] / 8)  # long ones slowed by the factor


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
def test_unsupported_rope_type_is_a_kiln_error(rope_type):
    cfg = {**hf_config("llama").to_dict(), "rope_parameters": None, "rope_theta": 10000.0,
           "rope_scaling": {"rope_type": rope_type, "factor": 2.0}}
    with pytest.raises(KilnError, match=rope_type):
        ModelArgs.from_hf_config(cfg)


def test_hub_and_transformers5_keys_give_the_same_args():
    new = hf_config("llama", rope_parameters=ROPES["llama3"]).to_dict()
    hub = {k: v for k, v in new.items() if k not in ("rope_parameters", "dtype")}
    hub.update(rope_theta=500000.0, torch_dtype="bfloat16",
               rope_scaling={k: v for k, v in ROPES["llama3"].items() if k != "rope_theta"})
    new["dtype"] = "bfloat16"
    assert ModelArgs.from_hf_config(hub) == ModelArgs.from_hf_config(new)


def test_family_flags():
    qwen2 = ModelArgs.from_hf_config(hf_config("qwen2").to_dict())
    assert qwen2.qkv_bias and not qwen2.o_bias and qwen2.sliding_window is None
    qwen3 = ModelArgs.from_hf_config(hf_config("qwen3", head_dim=48).to_dict())
    assert qwen3.qk_norm and qwen3.head_dim == 48 and not qwen3.qkv_bias
    mistral = ModelArgs.from_hf_config(hf_config("mistral", sliding_window=4096).to_dict())
    assert mistral.sliding_window == 4096 and mistral.layer_sliding_windows == (4096, 4096)
    # A Qwen2 hub config without layer_types: windows on layers >= max_window_layers.
    hub = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
           "num_hidden_layers": 3, "vocab_size": 10, "intermediate_size": 8,
           "use_sliding_window": True, "sliding_window": 32, "max_window_layers": 1,
           "eos_token_id": [5, 6]}
    args = ModelArgs.from_hf_config(hub)
    assert args.layer_sliding_windows == (None, 32, 32) and args.eos_token_ids == (5, 6)
    assert args.num_key_value_heads == 4 and args.head_dim == 16


def test_registry():
    assert set(supported_architectures()) == {"LlamaForCausalLM", "MistralForCausalLM",
                                              "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
    with pytest.raises(KilnError, match="FalconForCausalLM.*LlamaForCausalLM"):
        resolve_model_class(["FalconForCausalLM"])
    with pytest.raises(KilnError, match="none listed"):
        ModelArgs.from_hf_config({"model_type": "gpt2"})
    assert ModelArgs.from_hf_config(hf_config("mistral").to_dict()).architecture == "MistralForCausalLM"
