"""Test helpers: tiny HF checkpoints, a test-only paged decoding loop over a kiln model, HF references."""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.layers.forward_context import build_attention_metadata

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2)


def hf_config(family: str, **overrides):
    """A tiny transformers config object of one family (kwargs override the tiny defaults)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
           "qwen3": Qwen3Config}[family]
    return cls(**{**TINY, **overrides})


def save_hf_checkpoint(config, out_dir: Path, seed: int = 0, max_shard_size: str | None = None):
    """Random HF model from ``config`` (norms and biases perturbed too), saved; returns the HF model."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # HF initialises norms to 1 and biases to 0; perturb them so mixing them up shows.
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif "embed_tokens" in name or "lm_head" in name:
                # Larger token embeddings spread the logits, so greedy choices are never near-ties.
                p.mul_(4.0)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out_dir), **kwargs)
    return model


@torch.no_grad()
def hf_logits(model, tokens: list[int]) -> torch.Tensor:
    """[len(tokens), V] float32 logits of one HF forward over the whole sequence."""
    return model(torch.tensor([tokens])).logits[0].float()


@torch.no_grad()
def hf_greedy(model, prompt: list[int], num_tokens: int) -> list[int]:
    """Greedy continuation by HF (full recompute each step: simple and independent of caches)."""
    tokens = list(prompt)
    for _ in range(num_tokens):
        tokens.append(int(hf_logits(model, tokens)[-1].argmax()))
    return tokens[len(prompt):]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the error on the scale of the logits."""
    return float((a - b).abs().max() / b.abs().max())


class PagedRunner:
    """A test-only stand-in for the engine: block tables and a paged KV cache around a kiln model.

    ``step`` feeds a flat batch of new tokens for several sequences and returns the logits of
    every new token, so tests can check chunking, batching and prefix reuse.
    """

    def __init__(self, model, num_blocks: int = 256, block_size: int = 4):
        args = model.args
        dtype = next(model.parameters()).dtype
        self.model = model
        self.block_size = block_size
        self.caches = [torch.zeros(2, num_blocks, block_size, args.num_key_value_heads, args.head_dim,
                                   dtype=dtype) for _ in range(args.num_hidden_layers)]
        self.free = list(range(num_blocks - 1, -1, -1))
        self.tables: dict[str, list[int]] = {}
        self.lengths: dict[str, int] = {}

    def share_prefix(self, new_seq: str, from_seq: str, num_blocks: int) -> None:
        """Start ``new_seq`` on the first ``num_blocks`` (full) cached blocks of ``from_seq``."""
        assert self.lengths[from_seq] >= num_blocks * self.block_size
        self.tables[new_seq] = list(self.tables[from_seq][:num_blocks])
        self.lengths[new_seq] = num_blocks * self.block_size

    @torch.no_grad()
    def step(self, batch: list[tuple[str, list[int]]], rows: list[int] | None = None):
        """Run new tokens of several sequences in one flat forward; per sequence [n, V] logits.
        With ``rows`` (indices into the flat tokens) the model computes those rows alone past its
        last attention, and the step returns their logits [len(rows), V]."""
        seqs, ids, positions = [], [], []
        for seq, new in batch:
            table = self.tables.setdefault(seq, [])
            start = self.lengths.get(seq, 0)
            while len(table) * self.block_size < start + len(new):
                table.append(self.free.pop())
            seqs.append((start, len(new), table))
            ids += new
            positions += range(start, start + len(new))
            self.lengths[seq] = start + len(new)
        meta = build_attention_metadata(seqs, self.block_size)
        if rows is not None:
            hidden = self.model(torch.tensor(ids), torch.tensor(positions), self.caches, meta,
                                torch.tensor(rows, dtype=torch.int64))
            assert hidden.shape == (len(rows), self.model.args.hidden_size)
            return self.model.compute_logits(hidden) if rows else hidden
        hidden = self.model(torch.tensor(ids), torch.tensor(positions), self.caches, meta)
        logits = self.model.compute_logits(hidden)
        assert logits.dtype == torch.float32 and hidden.shape == (len(ids), self.model.args.hidden_size)
        return list(logits.split([len(new) for _, new in batch]))

    def greedy(self, seq: str, prompt: list[int], num_tokens: int) -> list[int]:
        """Prefill ``prompt`` then decode ``num_tokens`` greedily, one token per step."""
        out = [int(self.step([(seq, prompt)])[0][-1].argmax())]
        while len(out) < num_tokens:
            out.append(int(self.step([(seq, [out[-1]])])[0][-1].argmax()))
        return out
