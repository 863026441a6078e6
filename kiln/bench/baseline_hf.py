"""Hugging Face transformers' own `generate`, timed on the same workload, as the baseline."""

from __future__ import annotations

import time

import torch

from kiln.bench.common import sync


def load_hf_model(model_dir: str, dtype: torch.dtype, device: torch.device):
    """The checkpoint through transformers' model classes."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()


@torch.inference_mode()
def hf_generate_seconds(model, prompts: list[list[int]], new_tokens: int, device: torch.device,
                        pad_id: int = 0) -> float:
    """Seconds for greedy generation of exactly ``new_tokens`` for a batch (left-padded)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    sync(device)
    t0 = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    sync(device)
    return time.perf_counter() - t0
