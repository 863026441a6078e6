"""Paged KV cache bookkeeping: block pool, chained block hashes, per-request manager (no tensors)."""

from kiln.kv_cache.block_pool import BlockPool
from kiln.kv_cache.hashing import BlockHash, hash_block_tokens
from kiln.kv_cache.manager import KVCacheManager

__all__ = ["BlockPool", "BlockHash", "KVCacheManager", "hash_block_tokens"]
