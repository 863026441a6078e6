"""The pool of KV blocks: reference counts, an LRU free list, and the hash -> block map."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from kiln.kv_cache.hashing import BlockHash


class BlockPool:
    """``num_blocks`` KV blocks, identified by 0 .. num_blocks - 1.

    A block is in use while its reference count is above zero, and free otherwise. Free blocks sit
    in one list that is also the eviction order: ``allocate`` takes blocks from its head. Freed
    blocks that hold a cached (hashed, full) block go to the tail, so the cached content used least
    recently is evicted first; freed blocks with nothing cached go to the head, since losing them
    costs nothing. A free block that is still cached can be taken back by a prefix hit (``touch``)
    without losing its content.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_total_blocks = num_blocks
        self.enable_caching = enable_caching
        self._ref_counts = [0] * num_blocks
        self._hashes: list[BlockHash | None] = [None] * num_blocks
        # An OrderedDict gives O(1) removal from the middle, which reviving a cached block needs.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._cached: dict[BlockHash, int] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks with reference count 0, cached or not (cached ones are evictable)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one request."""
        return self.num_total_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently reachable through the hash map (in use or free)."""
        return len(self._cached)

    def ref_count(self, block_id: int) -> int:
        """How many requests hold ``block_id``."""
        return self._ref_counts[block_id]

    def block_hash(self, block_id: int) -> BlockHash | None:
        """The hash the block is cached under, or None."""
        return self._hashes[block_id]

    def free_block_ids(self) -> list[int]:
        """The free blocks in eviction order (first is evicted first)."""
        return list(self._free)

    def lookup(self, block_hash: BlockHash) -> int | None:
        """The block that holds ``block_hash``, or None on a miss."""
        if not self.enable_caching:
            return None
        return self._cached.get(block_hash)

    def allocate(self, num_blocks: int) -> list[int]:
        """Take ``num_blocks`` free blocks (reference count 1), evicting cached content as needed.

        Raises ValueError when fewer than ``num_blocks`` blocks are free; callers check first.
        """
        if num_blocks > len(self._free):
            raise ValueError(f"asked for {num_blocks} blocks, only {len(self._free)} free")
        blocks = []
        for _ in range(num_blocks):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self._ref_counts[block_id] = 1
            blocks.append(block_id)
        return blocks

    def touch(self, block_ids: Iterable[int]) -> None:
        """Add one reference to each block (a prefix hit); a free block leaves the free list."""
        for block_id in block_ids:
            if self._ref_counts[block_id] == 0:
                del self._free[block_id]
            self._ref_counts[block_id] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference from each block, in the given order.

        Blocks reaching zero join the free list: cached ones at the tail in the given order (so
        the first given is evicted first among them), uncached ones at the head.
        """
        for block_id in block_ids:
            count = self._ref_counts[block_id]
            if count <= 0:
                raise ValueError(f"block {block_id} freed more often than it was taken")
            self._ref_counts[block_id] = count - 1
            if count == 1:
                self._free[block_id] = None
                if self._hashes[block_id] is None:
                    self._free.move_to_end(block_id, last=False)

    def cache_block(self, block_id: int, block_hash: BlockHash) -> bool:
        """Register a full, computed, in-use block under ``block_hash``.

        Returns False (and caches nothing) when caching is off, when the block is already cached,
        or when another block already holds the same content: two requests that computed the same
        block at once keep their own copies, and only the first is shared.
        """
        if not self.enable_caching or self._hashes[block_id] is not None:
            return False
        if self._ref_counts[block_id] == 0:
            raise ValueError(f"block {block_id} is free; only blocks in use can be cached")
        if block_hash in self._cached:
            return False
        self._cached[block_hash] = block_id
        self._hashes[block_id] = block_hash
        return True

    def _evict(self, block_id: int) -> None:
        block_hash = self._hashes[block_id]
        if block_hash is not None:
            self._hashes[block_id] = None
            if self._cached.get(block_hash) == block_id:
                del self._cached[block_hash]
