"""Block pool: reference counts, LRU eviction order, revival of cached free blocks."""

import pytest

from kiln.kv_cache.block_pool import BlockPool
from kiln.kv_cache.hashing import hash_block_tokens


def h(*tokens):
    return hash_block_tokens(None, tokens)


def test_allocate_sets_ref_counts_and_takes_blocks_off_the_free_list():
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    assert len(set(blocks)) == 3
    assert all(pool.ref_count(b) == 1 for b in blocks)
    assert pool.num_free_blocks == 1 and pool.num_used_blocks == 3
    with pytest.raises(ValueError):
        pool.allocate(2)
    assert pool.num_free_blocks == 1  # a failed allocation takes nothing


def test_shared_block_is_freed_only_when_the_last_holder_lets_go():
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.touch([b])
    assert pool.ref_count(b) == 2
    pool.free([b])
    assert pool.ref_count(b) == 1 and b not in pool.free_block_ids()
    pool.free([b])
    assert pool.ref_count(b) == 0 and b in pool.free_block_ids()
    with pytest.raises(ValueError):
        pool.free([b])


def test_cached_blocks_go_to_the_tail_and_uncached_to_the_head():
    pool = BlockPool(4)
    a, b, c, d = pool.allocate(4)
    assert pool.cache_block(a, h(1))
    assert pool.cache_block(b, h(2))
    pool.free([b, a])  # b first: b is evicted before a
    pool.free([c])      # uncached: evicted before any cached block
    assert pool.free_block_ids() == [c, b, a]
    pool.free([d])
    assert pool.free_block_ids()[0] == d


def test_eviction_is_least_recently_used_first_and_drops_the_hash():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    for blk, tok in ((a, 1), (b, 2), (c, 3)):
        pool.cache_block(blk, h(tok))
    pool.free([a])
    pool.free([b])
    pool.free([c])
    assert pool.lookup(h(1)) == a
    (first,) = pool.allocate(1)
    assert first == a
    assert pool.lookup(h(1)) is None and pool.block_hash(a) is None
    assert pool.lookup(h(2)) == b and pool.lookup(h(3)) == c
    assert pool.num_cached_blocks == 2


def test_a_cached_free_block_is_revived_by_a_hit():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.cache_block(b, h(7))
    pool.free([a, b, c])
    assert pool.num_free_blocks == 3
    assert pool.lookup(h(7)) == b
    pool.touch([b])
    assert pool.ref_count(b) == 1 and b not in pool.free_block_ids()
    assert pool.num_free_blocks == 2
    # allocating everything else must not evict the revived block
    others = pool.allocate(2)
    assert b not in others and pool.lookup(h(7)) == b


def test_duplicate_content_keeps_the_first_block_only():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    assert pool.cache_block(a, h(5))
    assert not pool.cache_block(b, h(5))
    assert not pool.cache_block(a, h(6))  # already cached under another hash
    assert pool.lookup(h(5)) == a and pool.block_hash(b) is None


def test_caching_disabled_caches_nothing():
    pool = BlockPool(2, enable_caching=False)
    (a,) = pool.allocate(1)
    assert not pool.cache_block(a, h(1))
    assert pool.lookup(h(1)) is None
