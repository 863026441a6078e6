"""ModelArgs: one normalised description of a Llama-family checkpoint, built from its HF config dict.

Hub checkpoints and transformers 5 write different keys for the same facts (``rope_theta`` +
``rope_scaling`` + ``torch_dtype`` versus ``rope_parameters`` + ``dtype``); everything past this
file sees only ModelArgs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.errors import KilnError
from kiln.layers.rotary import RopeConfig

# Per architecture: which optional parts its layers have. "attention_bias" means the flag is read
# from the config key of that name (Llama, Qwen3); True/False are fixed by the architecture.
_FAMILY_FLAGS = {
    "LlamaForCausalLM": dict(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=False,
                             mlp_bias="mlp_bias", window="none"),
    "MistralForCausalLM": dict(qkv_bias=False, o_bias=False, qk_norm=False, mlp_bias=False,
                               window="all"),
    "Qwen2ForCausalLM": dict(qkv_bias=True, o_bias=False, qk_norm=False, mlp_bias=False,
                             window="qwen"),
    "Qwen3ForCausalLM": dict(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True,
                             mlp_bias=False, window="qwen"),
}

SUPPORTED_ARCHITECTURES = tuple(_FAMILY_FLAGS)
# For configs that name no architecture (e.g. a bare config object's dict), the model_type decides.
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass(frozen=True)
class ModelArgs:
    """Shapes and flags of a decoder-only Llama-family model (Llama 2/3/3.x, Mistral, Qwen2/2.5, Qwen3)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeConfig
    layer_sliding_windows: tuple[int | None, ...]
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: str | None = None

    @property
    def sliding_window(self) -> int | None:
        """The attention window of the layers that have one (None: every layer sees everything)."""
        windows = {w for w in self.layer_sliding_windows if w is not None}
        return max(windows) if windows else None

    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (embedding and an untied head counted separately)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * (q + 2 * kv) + q * h
        attn += (q + 2 * kv) * self.qkv_bias + h * self.o_bias + 2 * d * self.qk_norm
        mlp = 3 * h * self.intermediate_size + (2 * self.intermediate_size + h) * self.mlp_bias
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embed + head + h + self.num_hidden_layers * per_layer

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> "ModelArgs":
        """Normalise a parsed config.json (either key style); raise KilnError on what is not supported."""
        architecture = _architecture(config)
        flags = _FAMILY_FLAGS[architecture]
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            layers = int(config["num_hidden_layers"])
            vocab = int(config["vocab_size"])
            intermediate = int(config["intermediate_size"])
        except KeyError as e:
            raise KilnError(f"config.json lacks {e.args[0]!r}; it is needed for {architecture}") from None
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise KilnError(f"hidden_act {act!r} is not supported (only silu)")
        head_dim = config.get("head_dim") or hidden // heads
        kv_heads = config.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise KilnError(f"num_attention_heads ({heads}) must be a multiple of "
                            f"num_key_value_heads ({kv_heads})")

        def flag(value: bool | str) -> bool:
            return bool(config.get(value, False)) if isinstance(value, str) else value

        eos = config.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=architecture,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(kv_heads),
            head_dim=int(head_dim),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope=rope_config_from_hf(config),
            layer_sliding_windows=_layer_windows(config, flags["window"], layers),
            qkv_bias=flag(flags["qkv_bias"]),
            o_bias=flag(flags["o_bias"]),
            mlp_bias=flag(flags["mlp_bias"]),
            qk_norm=flags["qk_norm"],
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos_ids,
            dtype=config.get("dtype") or config.get("torch_dtype"),
        )


def _architecture(config: dict[str, Any]) -> str:
    """The one supported entry of ``architectures`` (KilnError naming the supported ones otherwise)."""
    names = config.get("architectures") or []
    for name in names:
        if name in _FAMILY_FLAGS:
            return name
    if not names and config.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[config["model_type"]]
    found = ", ".join(names) if names else "none listed"
    raise KilnError(f"unsupported architecture ({found}); kiln supports "
                    f"{', '.join(SUPPORTED_ARCHITECTURES)}")


def rope_config_from_hf(config: dict[str, Any]) -> RopeConfig:
    """RoPE settings from ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (hub)."""
    params = dict(config.get("rope_parameters") or {})
    if params and not ("rope_type" in params or "type" in params or "rope_theta" in params):
        raise KilnError("per-layer-type rope_parameters are not supported by the Llama family loader")
    scaling = config.get("rope_scaling") or {}
    # Hub configs keep theta at the top level; older scaling dicts say "type" for "rope_type".
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if merged.get("partial_rotary_factor", 1.0) != 1.0:
        raise KilnError("partial_rotary_factor != 1 is not supported")
    original = merged.get("original_max_position_embeddings")
    if rope_type == "llama3" and original is None:
        original = config.get("max_position_embeddings")
    return RopeConfig(
        rope_type=rope_type,
        theta=float(theta),
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=None if original is None else int(original),
    )


def _layer_windows(config: dict[str, Any], rule: str, num_layers: int) -> tuple[int | None, ...]:
    """Per-layer sliding window, following what transformers does for each family."""
    window = config.get("sliding_window")
    if rule == "none" or window is None:
        return (None,) * num_layers
    if rule == "all":
        return (int(window),) * num_layers
    # Qwen2/Qwen3: windows only when use_sliding_window, on layers >= max_window_layers, unless
    # layer_types (transformers 5) spells the layers out.
    if not config.get("use_sliding_window", False):
        return (None,) * num_layers
    types = config.get("layer_types")
    if types is None:
        first = int(config.get("max_window_layers", num_layers))
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    if len(types) != num_layers:
        raise KilnError(f"layer_types lists {len(types)} layers, num_hidden_layers is {num_layers}")
    return tuple(int(window) if t == "sliding_attention" else None for t in types)
