"""Test helpers: a tiny checkpoint with the demo tokenizer, greedy decoding over a kiln model."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from kiln.layers.forward_context import build_attention_metadata

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CALIB_TEXT = '''def parse(text):
    """Split text into words and count them."""
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()
'''


def write_tiny_checkpoint(out_dir: Path, seed: int = 0, tied: bool = False) -> Path:
    """A random float32 Llama (hidden 128, 2 layers) that uses the demo model's tokenizer; tied:
    its LM head shares the token embedding (tie_word_embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kiln.demo import DEMO_MODEL

    config = LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=0, eos_token_id=0,
                         tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
                p[:3] *= 10.0  # outlier channels, as trained models have
            elif "embed_tokens" in name or "lm_head" in name:
                p.mul_(4.0)
    model.save_pretrained(str(out_dir))
    for name in TOKENIZER_FILES:
        shutil.copy(Path(DEMO_MODEL) / name, out_dir / name)
    return out_dir


def write_calib_file(path: Path, copies: int = 30) -> Path:
    """A plain-text calibration/eval file with enough tokens for a few windows."""
    path.write_text(CALIB_TEXT * copies)
    return path


@torch.no_grad()
def greedy(model, prompt: list[int], num_tokens: int, block_size: int = 16) -> list[int]:
    """Greedy decoding of one sequence through the paged forward (prefill, then one token a step)."""
    args = model.args
    dtype = model.embed_tokens.weight.dtype
    total = len(prompt) + num_tokens
    blocks = list(range(-(-total // block_size)))
    caches = [torch.zeros(2, len(blocks), block_size, args.num_key_value_heads, args.head_dim,
                          dtype=dtype) for _ in range(args.num_hidden_layers)]
    out: list[int] = []
    new, start = list(prompt), 0
    while len(out) < num_tokens:
        meta = build_attention_metadata([(start, len(new), blocks)], block_size)
        hidden = model(torch.tensor(new), torch.arange(start, start + len(new)), caches, meta)
        token = int(model.compute_logits(hidden[-1:]).argmax())
        out.append(token)
        start += len(new)
        new = [token]
    return out
