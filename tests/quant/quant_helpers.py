"""Test helpers: a tiny random kiln model, and calibration windows for it."""

from __future__ import annotations

import torch

from kiln.models.args import ModelArgs
from kiln.models.llama import LlamaFamilyModel
from kiln.quant.calibration import TokenWindows, forward_windows

TINY = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=512,
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
            rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def tiny_args(**overrides) -> ModelArgs:
    """ModelArgs of a tiny Llama (K = 128 everywhere int4 needs it)."""
    return ModelArgs.from_hf_config({**TINY, **overrides})


def random_model(args: ModelArgs | None = None, seed: int = 0, outlier_channels: int = 4
                 ) -> LlamaFamilyModel:
    """A float32 kiln model with random weights; a few hidden channels get large norm weights,
    so that activations have the outlier channels real LLMs have."""
    args = args or tiny_args()
    model = LlamaFamilyModel(args, torch.float32, "cpu").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                if "layernorm" in name:
                    p[:outlier_channels] *= 20.0
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            if name == "embed_tokens.weight":
                p.mul_(20.0)
    return model


def random_windows(args: ModelArgs, num: int = 4, seq_len: int = 32, seed: int = 1) -> TokenWindows:
    """Random token windows."""
    g = torch.Generator().manual_seed(seed)
    return TokenWindows(torch.randint(3, args.vocab_size, (num, seq_len), generator=g), "random")


def logits_of(model, windows: TokenWindows) -> torch.Tensor:
    """[S, L, V] float32 logits of every window."""
    return torch.cat(list(forward_windows(model, windows.windows)))
