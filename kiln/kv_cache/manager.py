"""Per-request view of the paged KV cache: block tables, prefix hits, slot allocation."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.kv_cache.block_pool import BlockPool
from kiln.kv_cache.hashing import BlockHash, extend_block_hashes
from kiln.request import Request


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


@dataclass
class _PrefixHit:
    """A lookup result waiting for ``allocate_slots`` to take (or drop) it."""

    block_ids: list[int]
    num_query_tokens: int


@dataclass
class _RequestBlocks:
    """What the manager remembers about one request."""

    table: list[int] = field(default_factory=list)
    hashes: list[BlockHash] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading table entries already offered to the prefix cache


class KVCacheManager:
    """Hands out KV blocks to requests and shares full blocks between them by prefix.

    The manager deals in block ids only; the tensors live in the model runner. Tokens of a request
    sit in its block table in order: token at position p is in block ``table[p // block_size]``.

    Use: for a waiting request call ``get_computed_blocks`` and, right after, ``allocate_slots``
    (which takes the prefix hit found, or drops it if the allocation fails). For a running request
    call ``allocate_slots`` alone. After its tokens are computed, ``cache_blocks`` makes its newly
    full blocks available to other requests; ``free`` gives everything back.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self._requests: dict[str, _RequestBlocks] = {}
        self._pending_hits: dict[str, _PrefixHit] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds (cached content in them may still be revived)."""
        return self.pool.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        """Size of the pool."""
        return self.pool.num_total_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests, in [0, 1]."""
        return self.pool.num_used_blocks / self.pool.num_total_blocks

    def block_table(self, request_id: str) -> list[int]:
        """A copy of the request's block table (empty if it holds no blocks)."""
        blocks = self._requests.get(request_id)
        return list(blocks.table) if blocks else []

    def get_computed_blocks(self, request: Request) -> int:
        """Number of leading tokens of ``request`` whose K/V are already cached.

        Counts whole blocks only and never covers the last token, which must be computed for the
        request to get logits. The hit is remembered for the next ``allocate_slots`` of this
        request, which must follow before anything else changes the pool. Returns 0 when prefix
        caching is off or the request already holds blocks.
        """
        if not self.enable_prefix_caching or self._holds_blocks(request.request_id):
            return 0
        blocks = self._requests.setdefault(request.request_id, _RequestBlocks())
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        extend_block_hashes(blocks.hashes, request.all_token_ids, self.block_size, max_hit_blocks)
        hit: list[int] = []
        for block_hash in blocks.hashes[:max_hit_blocks]:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            hit.append(block_id)
        self._pending_hits[request.request_id] = _PrefixHit(hit, request.num_tokens)
        return len(hit) * self.block_size

    def num_blocks_to_allocate(self, request: Request, num_total_tokens: int) -> int:
        """Free blocks the request would consume to hold ``num_total_tokens`` tokens in all.

        Accounts for a pending prefix hit: shared blocks cost nothing, cached blocks revived from
        the free list cost one each.
        """
        hit = self._pending_hits.get(request.request_id)
        held = len(self.block_table(request.request_id))
        revived = 0
        if hit is not None:
            held += len(hit.block_ids)
            revived = sum(1 for b in hit.block_ids if self.pool.ref_count(b) == 0)
        return max(0, cdiv(num_total_tokens, self.block_size) - held) + revived

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Make room for ``num_new_tokens`` tokens after the request's computed ones.

        The computed tokens are the pending prefix hit for a request just looked up, otherwise
        ``request.num_computed_tokens``. Returns False, allocating nothing, when too few blocks
        are free; a pending hit is dropped either way (look it up again before retrying).
        Prefix-cache counters (in tokens) are counted here, once per successful admission, so a
        request that waits for blocks over several steps is not counted again and again.
        """
        request_id = request.request_id
        hit = self._pending_hits.pop(request_id, None)
        if hit is None:
            # The common decode step: the tokens still fit in the blocks already held.
            held = self._requests.get(request_id)
            if (held is not None and request.num_computed_tokens + num_new_tokens
                    <= len(held.table) * self.block_size):
                return True
        elif self._holds_blocks(request_id):
            raise RuntimeError(f"request {request_id} already holds blocks; a prefix hit cannot apply")
        num_computed = len(hit.block_ids) * self.block_size if hit else request.num_computed_tokens
        blocks = self._requests.get(request_id) or _RequestBlocks()
        reused = hit.block_ids if hit else []
        num_new_blocks = max(0, cdiv(num_computed + num_new_tokens, self.block_size)
                             - len(blocks.table) - len(reused))
        num_revived = sum(1 for b in reused if self.pool.ref_count(b) == 0)
        if num_new_blocks + num_revived > self.pool.num_free_blocks:
            return False
        # Revive the hit first so that allocating fresh blocks cannot evict it.
        self.pool.touch(reused)
        blocks.table.extend(reused)
        blocks.table.extend(self.pool.allocate(num_new_blocks))
        if hit is not None:
            blocks.num_cached_blocks = len(reused)
            self.prefix_cache_queries += hit.num_query_tokens
            self.prefix_cache_hits += len(reused) * self.block_size
        self._requests[request_id] = blocks
        return True

    def cache_blocks(self, request: Request) -> None:
        """Offer the request's full, computed blocks to the prefix cache.

        Call after ``request.num_computed_tokens`` has advanced; blocks already offered are
        skipped, so calling it every step costs only the newly full blocks.
        """
        if not self.enable_prefix_caching:
            return
        blocks = self._requests.get(request.request_id)
        if blocks is None:
            return
        # Only tokens the host knows can be hashed (one may still be in flight).
        known = min(request.num_computed_tokens, request.num_tokens)
        num_full = min(known // self.block_size, len(blocks.table))
        if num_full <= blocks.num_cached_blocks:
            return
        extend_block_hashes(blocks.hashes, request.all_token_ids, self.block_size, num_full)
        for i in range(blocks.num_cached_blocks, num_full):
            self.pool.cache_block(blocks.table[i], blocks.hashes[i])
        blocks.num_cached_blocks = num_full

    def free(self, request: Request) -> None:
        """Give back every block of the request (cached content stays until evicted)."""
        self._pending_hits.pop(request.request_id, None)
        blocks = self._requests.pop(request.request_id, None)
        if blocks is not None:
            # Last block first: the tail of a sequence is the part least likely to be shared,
            # so it should be evicted before the prefix it hangs off.
            self.pool.free(reversed(blocks.table))

    def _holds_blocks(self, request_id: str) -> bool:
        blocks = self._requests.get(request_id)
        return blocks is not None and bool(blocks.table)
