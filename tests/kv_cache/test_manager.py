"""KV cache manager: block tables, prefix hits in tokens, caching of full blocks."""

from kiln.kv_cache.manager import KVCacheManager
from kiln.request import Request
from kiln.sampling_params import SamplingParams


def make_request(rid, tokens):
    return Request(request_id=rid, prompt_token_ids=list(tokens), sampling_params=SamplingParams())


def admit(kv, req, chunk=None):
    """Look up, allocate and 'compute' a whole prompt (or a chunk of it)."""
    hit = kv.get_computed_blocks(req)
    n = (req.num_tokens - hit) if chunk is None else chunk
    assert kv.allocate_slots(req, n)
    req.num_computed_tokens = hit + n
    kv.cache_blocks(req)
    return hit


def test_block_table_grows_with_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    req = make_request("a", range(6))
    assert kv.get_computed_blocks(req) == 0
    assert kv.allocate_slots(req, 6)
    assert len(kv.block_table("a")) == 2
    req.num_computed_tokens = 6
    assert kv.allocate_slots(req, 2)  # fills block 2 to the brim: no new block
    assert len(kv.block_table("a")) == 2
    req.num_computed_tokens = 8
    assert kv.allocate_slots(req, 1)
    assert len(kv.block_table("a")) == 3
    assert kv.num_free_blocks == 5 and kv.usage == 3 / 8
    kv.free(req)
    assert kv.num_free_blocks == 8 and kv.block_table("a") == [] and kv.usage == 0.0


def test_allocate_fails_without_taking_anything():
    kv = KVCacheManager(num_blocks=3, block_size=2)
    a = make_request("a", range(4))
    admit(kv, a)
    b = make_request("b", range(100, 104))
    kv.get_computed_blocks(b)
    assert not kv.allocate_slots(b, 4)
    assert kv.num_free_blocks == 1 and kv.block_table("b") == []


def test_prefix_hit_is_counted_in_tokens_and_shares_blocks():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = make_request("a", range(10))  # 2 full blocks + 2 tokens
    assert admit(kv, a) == 0
    b = make_request("b", list(range(8)) + [50, 51, 52])
    assert admit(kv, b) == 8
    assert kv.block_table("b")[:2] == kv.block_table("a")[:2]
    assert kv.block_table("b")[2] != kv.block_table("a")[2]
    assert kv.pool.ref_count(kv.block_table("a")[0]) == 2
    assert kv.prefix_cache_queries == 10 + 11
    assert kv.prefix_cache_hits == 8


def test_never_the_whole_prompt():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    admit(kv, make_request("a", range(8)))
    b = make_request("b", range(8))  # identical, exactly two full blocks
    assert kv.get_computed_blocks(b) == 4  # the last token must be computed
    c = make_request("c", range(9))
    assert kv.get_computed_blocks(c) == 8


def test_hit_survives_free_and_is_revived_from_the_free_list():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = make_request("a", range(5))
    admit(kv, a)
    shared = kv.block_table("a")[:2]
    kv.free(a)
    assert kv.num_free_blocks == 4
    b = make_request("b", range(5))
    assert admit(kv, b) == 4
    assert kv.block_table("b")[:2] == shared
    assert kv.num_free_blocks == 1


def test_lru_evicts_the_oldest_cached_prefix():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    old = make_request("old", [1, 1, 1])
    new = make_request("new", [2, 2, 2])
    admit(kv, old)
    kv.free(old)
    admit(kv, new)
    kv.free(new)
    # 3 of the 4 blocks: the two uncached ones first, then the least recently used cached one
    filler = make_request("f", [3, 3, 3, 3, 3])
    admit(kv, filler)
    kv.free(filler)
    assert kv.get_computed_blocks(make_request("x", [2, 2, 2])) == 2
    assert kv.get_computed_blocks(make_request("y", [1, 1, 1])) == 0


def test_no_hit_when_prefix_caching_is_disabled():
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    admit(kv, make_request("a", range(10)))
    b = make_request("b", range(10))
    assert kv.get_computed_blocks(b) == 0
    assert kv.allocate_slots(b, 10)
    assert not set(kv.block_table("a")) & set(kv.block_table("b"))
    assert kv.prefix_cache_queries == 0 and kv.prefix_cache_hits == 0


def test_failed_admission_is_not_counted():
    kv = KVCacheManager(num_blocks=2, block_size=2)
    admit(kv, make_request("a", range(3)))
    b = make_request("b", range(3))
    assert kv.get_computed_blocks(b) == 2
    assert not kv.allocate_slots(b, 3)  # would need 2 new blocks, only 0 free
    assert kv.prefix_cache_queries == 3 and kv.prefix_cache_hits == 0


def test_revival_counts_against_free_blocks():
    kv = KVCacheManager(num_blocks=3, block_size=2)
    a = make_request("a", range(5))  # 3 blocks, 2 full
    admit(kv, a)
    kv.free(a)
    b = make_request("b", range(4))  # hit: first block (4 tokens -> at most 1 block)
    assert kv.get_computed_blocks(b) == 2
    assert kv.num_blocks_to_allocate(b, 4) == 2  # one revived + one fresh
    assert kv.allocate_slots(b, 2)
    assert kv.num_free_blocks == 1


def test_cache_blocks_only_full_computed_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = make_request("a", range(7))
    assert kv.get_computed_blocks(a) == 0
    assert kv.allocate_slots(a, 3)
    a.num_computed_tokens = 3
    kv.cache_blocks(a)
    assert kv.pool.num_cached_blocks == 0
    assert kv.allocate_slots(a, 4)
    a.num_computed_tokens = 7
    kv.cache_blocks(a)
    assert kv.pool.num_cached_blocks == 1
    # decoding appends tokens; the second block becomes full once position 7 is computed
    a.append_output_token(99)
    assert kv.allocate_slots(a, 1)
    a.num_computed_tokens = 8
    kv.cache_blocks(a)
    assert kv.pool.num_cached_blocks == 2
    b = make_request("b", list(range(7)) + [99, 5])
    assert kv.get_computed_blocks(b) == 8
