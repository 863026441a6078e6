"""KILN_L2_PREFETCH's settings, and that a model off CUDA never prefetches."""

import pytest
import torch

from kiln.kernels import l2_prefetch


def test_budgets_from_env(monkeypatch):
    monkeypatch.delenv("KILN_L2_PREFETCH", raising=False)
    assert l2_prefetch.budgets_from_env() is None
    monkeypatch.setenv("KILN_L2_PREFETCH", "0")
    assert l2_prefetch.budgets_from_env() is None
    monkeypatch.setenv("KILN_L2_PREFETCH", "34,8,0.5,0")
    assert l2_prefetch.budgets_from_env() == {"o_proj": 34 << 20, "gate_up_proj": 8 << 20,
                                              "down_proj": 1 << 19, "qkv_proj": 0}
    for bad in ("34,8", "a,b,c,d", "1,2,3,-4"):
        monkeypatch.setenv("KILN_L2_PREFETCH", bad)
        with pytest.raises(ValueError, match="KILN_L2_PREFETCH"):
            l2_prefetch.budgets_from_env()
    monkeypatch.setenv("KILN_L2_PREFETCH_MODE", "4")
    with pytest.raises(ValueError, match="KILN_L2_PREFETCH_MODE"):
        l2_prefetch.mode_from_env()


def test_weight_of_takes_the_streamed_tensor():
    from kiln.layers.linear import Linear

    lin = Linear(64, (32, 16), False, torch.float32, "cpu")
    assert l2_prefetch.weight_of(lin) is lin.weight
    assert l2_prefetch.weight_of(torch.nn.Module()) is None


def test_a_cpu_model_never_prefetches(monkeypatch):
    from kiln.models.args import ModelArgs
    from kiln.models.llama import LlamaFamilyModel
    from kiln.models.presets import preset_config

    monkeypatch.setenv("KILN_L2_PREFETCH", "34,8,6,8")
    model = LlamaFamilyModel(ModelArgs.from_hf_config(preset_config("tiny-llama")), torch.float32, "cpu")
    assert model.l2_prefetch is None
    assert all(layer.self_attn.l2_prefetch is None and layer.mlp.l2_prefetch is None
               for layer in model.layers)
