"""Random checkpoints: tiny presets agree between kiln and transformers; big presets have real shapes."""

from __future__ import annotations

import json

import pytest
import torch

from kiln.errors import KilnError
from kiln.models.args import ModelArgs
from kiln.models.loader import load_generation_config, load_model, load_tokenizer, weight_files
from kiln.models.presets import list_presets, preset_config
from kiln.models.random_model import checkpoint_shapes, write_random_model
from model_helpers import PagedRunner, hf_logits, rel_err

TINY = ["tiny-llama", "tiny-llama3", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-llama-d128",
        "tiny-llama-d2048"]
# Published parameter counts of the real models these presets copy.
REAL_COUNTS = {
    "llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248, "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496, "llama-3.2-1b": 1_235_814_400, "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512, "qwen3-8b": 8_190_735_360,
}


def test_presets_listed():
    assert set(TINY) | set(REAL_COUNTS) == set(list_presets())
    with pytest.raises(KilnError, match="llama-3-8b"):
        preset_config("gpt-5")


@pytest.mark.parametrize("preset", TINY)
def test_tiny_preset_loads_in_transformers_and_kiln_and_they_agree(preset, tmp_path):
    from transformers import AutoModelForCausalLM

    out = write_random_model(preset, tmp_path, seed=1, dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    model = load_model(out)
    assert model.args.dtype == "float32"
    prompt = list(range(5, 85))  # longer than tiny-llama3's 32 original positions and the 16 window
    ours = PagedRunner(model).step([("a", prompt)])[0]
    assert rel_err(ours, hf_logits(hf, prompt)) < 1e-4
    tok = load_tokenizer(out)
    text = "def main(argv):\n    return parse(argv)\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    gen = load_generation_config(out)
    assert gen["eos_token_id"] == [tok.eos_token_id] == list(model.args.eos_token_ids)


def test_sharding_index_and_determinism(tmp_path):
    one = write_random_model("tiny-qwen2", tmp_path / "one", seed=7, dtype="bfloat16")
    many = write_random_model("tiny-qwen2", tmp_path / "many", seed=7, dtype="bfloat16",
                              max_shard_bytes=40_000)
    other = write_random_model("tiny-qwen2", tmp_path / "other", seed=8, dtype="bfloat16")
    assert len(weight_files(one)) == 1 and len(weight_files(many)) > 3
    index = json.loads((many / "model.safetensors.index.json").read_text())
    args = ModelArgs.from_hf_config(json.loads((many / "config.json").read_text()))
    assert index["metadata"]["total_size"] == 2 * args.num_parameters()
    assert set(index["weight_map"]) == {n for n, _ in checkpoint_shapes(args)}
    a, b, c = (dict(load_model(d).named_parameters()) for d in (one, many, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.self_attn.qkv_proj.weight"], c["layers.0.self_attn.qkv_proj.weight"])
    norm = a["layers.0.input_layernorm.weight"].float()
    assert 0.8 < float(norm.mean()) < 1.2 and float(norm.std()) > 0
    std = float(a["layers.1.mlp.down_proj.weight"].float().std())
    assert 0.015 < std < 0.025


@pytest.mark.parametrize("preset", sorted(REAL_COUNTS))
def test_big_preset_shapes_match_the_real_model(preset):
    """Counted from the config three ways (ModelArgs, our tensor list, transformers on the meta
    device); nothing is written."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = preset_config(preset)
    args = ModelArgs.from_hf_config(cfg)
    shapes = checkpoint_shapes(args)
    assert args.num_parameters() == sum(torch.Size(s).numel() for _, s in shapes) == REAL_COUNTS[preset]
    hf_cfg = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_cfg)
    hf_shapes = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    assert hf_shapes == dict(shapes)
