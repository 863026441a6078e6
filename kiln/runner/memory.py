"""Sizing the paged KV cache: from free GPU memory on CUDA, from an explicit budget on the CPU."""

from __future__ import annotations

import logging

import torch

from kiln.config import CacheConfig, SchedulerConfig
from kiln.errors import KilnError

logger = logging.getLogger("kiln")


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of the KV cache: the model's for "auto", float8_e4m3fn for "fp8"."""
    if kv_cache_dtype == "auto":
        return model_dtype
    if kv_cache_dtype == "fp8":
        return torch.float8_e4m3fn
    raise KilnError(f"kv_cache_dtype must be 'auto' or 'fp8', got {kv_cache_dtype!r}")


def kv_block_bytes(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                   dtype: torch.dtype) -> int:
    """Bytes one KV block takes across all layers (keys and values), in the cache's dtype."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * elem


def allocate_kv_caches(args, num_blocks: int, block_size: int, dtype: torch.dtype,
                       device: torch.device | str) -> list[torch.Tensor]:
    """Zeroed per-layer paged KV caches [2, num_blocks, block_size, kv_heads, head_dim] for a
    model with ``args`` (num_hidden_layers, num_key_value_heads, head_dim)."""
    return [torch.zeros(2, num_blocks, block_size, args.num_key_value_heads, args.head_dim,
                        dtype=dtype, device=device)
            for _ in range(args.num_hidden_layers)]


def blocks_needed_at_most(cache: CacheConfig, sched: SchedulerConfig) -> int:
    """Blocks that max_num_seqs sequences of max_model_len tokens could ever use (plus one spare)."""
    per_seq = -(-sched.max_model_len // cache.block_size)
    return sched.max_num_seqs * per_seq + 1


def num_kv_blocks_cpu(block_bytes: int, cache: CacheConfig, sched: SchedulerConfig) -> int:
    """On the CPU: as many blocks as ``cpu_kv_cache_gb`` holds, but never more than can be used."""
    budget = int(cache.cpu_kv_cache_gb * (1 << 30)) // block_bytes
    return max(1, min(budget, blocks_needed_at_most(cache, sched)))


def num_kv_blocks_cuda(block_bytes: int, cache: CacheConfig, device: torch.device,
                       peak_activation_bytes: int) -> int:
    """On CUDA: the share ``gpu_memory_utilization`` of the card, less what weights and the
    profiled forward pass took, divided into blocks."""
    free, total = torch.cuda.mem_get_info(device)
    used_by_others = total - free - torch.cuda.memory_reserved(device)
    weights = torch.cuda.memory_allocated(device)
    budget = int(total * cache.gpu_memory_utilization) - used_by_others - weights - peak_activation_bytes
    if budget < block_bytes:
        raise KilnError(
            f"no GPU memory left for the KV cache (budget {budget / 2**30:.2f} GiB: "
            f"{cache.gpu_memory_utilization:g} of {total / 2**30:.2f} GiB less weights "
            f"{weights / 2**30:.2f} GiB, activations {peak_activation_bytes / 2**30:.2f} GiB and "
            f"{used_by_others / 2**30:.2f} GiB held by other processes); "
            "raise --gpu-memory-utilization or lower --max-num-batched-tokens")
    return budget // block_bytes
