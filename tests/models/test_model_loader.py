"""Loader: both config key styles, sharded weights, dtype choice, generation config, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kiln.errors import KilnError
from kiln.models.loader import (load_generation_config, load_hf_config, load_model, load_tokenizer,
                                weight_files)
from model_helpers import PagedRunner, hf_config, hf_logits, rel_err, save_hf_checkpoint

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny single-file Llama checkpoint and its HF model."""
    out = tmp_path_factory.mktemp("llama")
    return out, save_hf_checkpoint(hf_config("llama"), out, seed=3)


def _one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_hub_style_sharded_checkpoint_matches_transformers(tmp_path):
    hf = save_hf_checkpoint(hf_config("llama", rope_parameters=LLAMA3_ROPE), tmp_path, seed=4,
                            max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(weight_files(tmp_path)) > 1
    # Rewrite config.json the way hub checkpoints spell it.
    cfg = json.loads((tmp_path / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.pop("dtype", None)
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in rope.items()}
    cfg["torch_dtype"] = "float32"
    (tmp_path / "config.json").write_text(json.dumps(cfg))

    model = load_model(tmp_path)
    assert model.args.rope.rope_type == "llama3" and model.args.rope.theta == 10000.0
    assert model.args.dtype == "float32"
    prompt = list(range(3, 83))
    assert rel_err(PagedRunner(model).step([("a", prompt)])[0], hf_logits(hf, prompt)) < 1e-4


def test_dtype_auto_and_override(llama_dir):
    out, hf = llama_dir
    assert next(load_model(out).parameters()).dtype == torch.float32
    model = load_model(out, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.args.dtype == "bfloat16"
    assert model.rotary.cos_sin_cache.dtype == torch.float32
    prompt = list(range(3, 40))
    # bfloat16 keeps ~3 significant digits; this only checks the override computes the same model.
    assert rel_err(PagedRunner(model).step([("a", prompt)])[0], hf_logits(hf, prompt)) < 0.05


def test_auto_dtype_without_config_key_uses_the_weights(tmp_path, llama_dir):
    out, _ = llama_dir
    shutil.copytree(out, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg.pop("torch_dtype", None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    tensors = {k: v.to(torch.float16) for k, v in load_file(tmp_path / "m" / "model.safetensors").items()}
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    assert next(load_model(tmp_path / "m").parameters()).dtype == torch.float16


def test_generation_config(tmp_path, llama_dir):
    out, _ = llama_dir
    assert load_generation_config(out)["eos_token_id"] == [2]
    shutil.copytree(out, tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [7, 9], "temperature": 0.6, "top_p": 0.9, "bos_token_id": 1}))
    gen = load_generation_config(tmp_path / "m")
    assert gen["eos_token_id"] == [7, 9] and gen["temperature"] == 0.6 and gen["top_p"] == 0.9
    (tmp_path / "m" / "generation_config.json").unlink()
    assert load_generation_config(tmp_path / "m")["eos_token_id"] == [2]  # from config.json
    assert load_hf_config(tmp_path / "m")["architectures"] == ["LlamaForCausalLM"]


def test_missing_directory():
    with pytest.raises(KilnError) as e:
        load_model("/nonexistent/kiln-model")
    _one_line_error(e, "/nonexistent/kiln-model", "does not exist")


def test_missing_config(tmp_path):
    with pytest.raises(KilnError) as e:
        load_model(tmp_path)
    _one_line_error(e, "config.json")


def test_missing_weights(tmp_path, llama_dir):
    out, _ = llama_dir
    shutil.copy(out / "config.json", tmp_path / "config.json")
    with pytest.raises(KilnError) as e:
        load_model(tmp_path)
    _one_line_error(e, "no weights", "model.safetensors")


def test_unsupported_architecture(tmp_path, llama_dir):
    out, _ = llama_dir
    shutil.copytree(out, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KilnError) as e:
        load_model(tmp_path / "m")
    _one_line_error(e, "GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                    "Qwen3ForCausalLM")


@pytest.mark.parametrize("name", ["model.layers.1.mlp.up_proj.weight", "model.norm.weight",
                                  "model.layers.0.self_attn.k_proj.weight"])
def test_mismatched_weight_shape(tmp_path, llama_dir, name):
    out, _ = llama_dir
    shutil.copytree(out, tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    expected = tuple(tensors[name].shape)
    tensors[name] = torch.zeros(*[s + 1 for s in expected])
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(KilnError) as e:
        load_model(tmp_path / "m")
    found = tuple(s + 1 for s in expected)
    _one_line_error(e, name, str(found), str(expected))


def test_missing_and_unexpected_weights(tmp_path, llama_dir):
    out, _ = llama_dir
    shutil.copytree(out, tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(KilnError) as e:
        load_model(tmp_path / "m")
    _one_line_error(e, "missing", "layers.1.self_attn.qkv_proj.weight")
    tensors["model.layers.1.self_attn.v_proj.weight"] = torch.zeros(32, 64)
    tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(KilnError) as e:
        load_model(tmp_path / "m")
    _one_line_error(e, "model.layers.0.mlp.extra.weight")


def test_missing_tokenizer_is_a_kiln_error(llama_dir):
    out, _ = llama_dir
    with pytest.raises(KilnError) as e:
        load_tokenizer(out)
    _one_line_error(e, "tokenizer")


def test_bad_dtype(llama_dir):
    with pytest.raises(KilnError) as e:
        load_model(llama_dir[0], dtype="int8")
    _one_line_error(e, "int8")


def test_finish_loading_reaches_every_linear_and_the_head(llama_dir, monkeypatch):
    """The loader lets every unquantized Linear and the LM head rearrange its weight once loaded
    (LinearMethod / LMHead.finish_loading): with KILN_MMA_DIRECT on, a CPU model still keeps no
    second copy (the register-direct GEMV is CUDA only), but each of them has been asked."""
    from kiln.layers.embedding import LMHead
    from kiln.layers.linear import Linear

    monkeypatch.setenv("KILN_MMA_DIRECT", "1")
    model = load_model(llama_dir[0], dtype="bfloat16")
    mods = [m for m in model.modules() if isinstance(m, (Linear, LMHead))]
    assert any(isinstance(m, LMHead) for m in mods) and len(mods) > 2
    for mod in mods:
        assert hasattr(mod, "mma_direct") and mod.mma_direct is None, mod
