"""Shared helpers for the CPU kernel tests: random paged-cache cases and error measures."""

from __future__ import annotations

import torch

from kiln.layers.forward_context import AttentionMetadata, build_attention_metadata

# Norm-wise relative error allowed against the float32 references, per dtype.
TOL = {torch.float32: 1e-5, torch.float16: 5e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in out gives NaN (which fails any bound)."""
    out64, ref64 = out.double(), ref.double()
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30))


def paged_case(seqs: list[tuple[int, int]], num_kv_heads: int, head_dim: int, block_size: int,
               dtype: torch.dtype, gen: torch.Generator, device: str = "cpu",
               spare_blocks: int = 3) -> tuple[torch.Tensor, AttentionMetadata]:
    """A random KV cache and metadata for sequences given as (cached_len, num_new_tokens).

    Blocks are handed out in a random order so the block tables are not contiguous, and a few
    spare random blocks sit in the cache that no sequence may read.
    """
    need = [-(-(start + n) // block_size) for start, n in seqs]
    num_blocks = sum(need) + spare_blocks
    order = torch.randperm(num_blocks, generator=gen).tolist()
    described = []
    for (start, n), count in zip(seqs, need):
        table, order = order[:count], order[count:]
        described.append((start, n, table))
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    meta = build_attention_metadata(described, block_size, device=device)
    return kv_cache.to(dtype=dtype, device=device), meta


def greedy_tokens(model_dir, prompt_lengths: tuple[int, ...], offset: int):
    """A tiny float16 engine on the CPU (decode split into partitions when the caller pretends
    to be a large chip) generating 5 greedy tokens with log-probs for made-up prompts of these
    lengths: (per prompt, (token ids, sorted (token, log-prob) pairs per step)), and the LLM."""
    from kiln import LLM, SamplingParams

    prompts = [{"prompt_token_ids": [offset + (i * 7 + j) % 200 for j in range(n)]}
               for i, n in enumerate(prompt_lengths)]
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=1)
    llm = LLM(str(model_dir), dtype="float16", device="cpu", max_num_seqs=4, max_model_len=256)
    outs = llm.generate(prompts, params)
    return [(o.outputs[0].token_ids,
             [sorted((t, lp.logprob) for t, lp in d.items()) for d in o.outputs[0].logprobs])
            for o in outs], llm
