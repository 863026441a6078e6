"""The shipped demo checkpoints: they load in transformers, have the promised shapes and sizes,
and behave like trained models (finite logits, the demo model beats its draft on held-out code)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from kiln.demo import DEMO_DRAFT_MODEL, DEMO_MODEL

transformers = pytest.importorskip("transformers")

MODEL_DIRS = {"demo": DEMO_MODEL, "draft": DEMO_DRAFT_MODEL}
PARAM_RANGES = {"demo": (10_000_000, 13_000_000), "draft": (2_000_000, 3_000_000)}
CARD = Path(DEMO_MODEL).parent / "README.md"


@pytest.fixture(scope="module")
def models():
    """Both models loaded once, in float32 on the CPU."""
    loaded = {}
    for name, path in MODEL_DIRS.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        loaded[name] = model
    return loaded


@pytest.fixture(scope="module")
def tokenizer():
    """The demo model's tokenizer (the draft folder holds identical files)."""
    return transformers.AutoTokenizer.from_pretrained(DEMO_MODEL)


def test_paths_are_absolute_checkpoint_folders():
    for path in MODEL_DIRS.values():
        assert Path(path).is_absolute()
        for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"):
            assert (Path(path) / name).is_file(), f"{path} lacks {name}"


def test_both_folders_share_one_tokenizer():
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (Path(DEMO_MODEL) / name).read_bytes() == (Path(DEMO_DRAFT_MODEL) / name).read_bytes()


def test_total_size_on_disk_at_most_32_mb():
    total = sum(f.stat().st_size for path in MODEL_DIRS.values() for f in Path(path).iterdir())
    assert total <= 32 * 1024 * 1024, total


def test_configs_are_llama_bf16_with_eos(models):
    for name, path in MODEL_DIRS.items():
        config = json.loads((Path(path) / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["tie_word_embeddings"] is True
        assert config["eos_token_id"] == 0 and config["bos_token_id"] == 0
        assert config["max_position_embeddings"] >= 1024
        generation = json.loads((Path(path) / "generation_config.json").read_text())
        assert 0 in generation["eos_token_id"]
        assert models[name].config.num_key_value_heads < models[name].config.num_attention_heads


def test_weights_are_stored_in_bfloat16():
    from safetensors import safe_open

    for path in MODEL_DIRS.values():
        with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
            names = list(f.keys())
            assert names
            assert all(f.get_slice(n).get_dtype() == "BF16" for n in names)


@pytest.mark.parametrize("name", sorted(MODEL_DIRS))
def test_parameter_count_in_range(models, name):
    low, high = PARAM_RANGES[name]
    count = sum(p.numel() for p in models[name].parameters())
    assert low <= count <= high, count


def test_logits_are_finite_and_shaped(models, tokenizer):
    ids = tokenizer("import os\nprint(os.getcwd())\n", return_tensors="pt")["input_ids"]
    for model in models.values():
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
        assert torch.isfinite(logits).all()


def _card_continuation(prompt: str) -> str:
    """The demo model's continuation of ``prompt`` as recorded in the model card."""
    text = CARD.read_text()
    section = text.split(f"### `{prompt}`", 1)[1]
    block = re.search(r"demo-model:\n\n```python\n(.*?)\n```", section, re.S).group(1)
    assert block.startswith(prompt)
    return block[len(prompt):]


def test_fibonacci_greedy_continuation_is_nonempty_and_matches_card(models, tokenizer):
    prompt = "def fibonacci(n):"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = models["demo"].generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                      do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new_text = tokenizer.decode(out[0, ids.shape[1]:])
    assert new_text.strip()
    # 16 greedy tokens on this CPU agree with the 48 recorded from the GPU run.
    assert _card_continuation(prompt).startswith(new_text)


def _held_out_losses(models, tokenizer) -> dict:
    """Mean next-token loss of each model on the first 256 tokens of 8 held-out stdlib files
    (held out by the same path hash as in training)."""
    from kiln.demo import corpus as demo_corpus

    held_out = [f for f in demo_corpus.collect_stdlib_files() if f.split == "test"][:8]
    assert len(held_out) == 8
    ids = [tokenizer(f.text)["input_ids"][:256] for f in held_out]
    losses = {}
    for name, model in models.items():
        total, count = 0.0, 0
        for seq in ids:
            tensor = torch.tensor([seq])
            with torch.no_grad():
                total += float(model(input_ids=tensor, labels=tensor).loss) * (len(seq) - 1)
            count += len(seq) - 1
        losses[name] = total / count
    return losses


@pytest.fixture(scope="module")
def held_out_losses(models, tokenizer):
    return _held_out_losses(models, tokenizer)


def test_both_models_learned_python(held_out_losses):
    # A uniform guess over 4096 tokens is perplexity 4096; an untrained model is about that.
    for name, loss in held_out_losses.items():
        assert math.exp(loss) < 40, (name, held_out_losses)


def test_demo_clearly_beats_draft_on_held_out_code(held_out_losses):
    """The issue's bar: the demo model's held-out perplexity is clearly (10%) below the draft's."""
    assert math.exp(held_out_losses["demo"]) < 0.9 * math.exp(held_out_losses["draft"]), held_out_losses
