"""Chained block hashes: a block's hash covers every token before it."""

import pytest

from kiln.kv_cache.hashing import ROOT_PARENT_HASH, extend_block_hashes, hash_block_tokens


def test_hash_is_the_hash_of_parent_and_tokens():
    first = hash_block_tokens(None, [1, 2])
    assert first.value == hash((ROOT_PARENT_HASH, (1, 2)))
    second = hash_block_tokens(first, [3, 4])
    assert second.value == hash((first.value, (3, 4)))


def test_same_tokens_after_a_different_prefix_hash_differently():
    a = hash_block_tokens(hash_block_tokens(None, [1, 2]), [9, 9])
    b = hash_block_tokens(hash_block_tokens(None, [1, 3]), [9, 9])
    assert a != b and a.value != b.value
    again = hash_block_tokens(hash_block_tokens(None, [1, 2]), [9, 9])
    assert a == again and hash(a) == hash(again)


def test_equal_values_with_different_tokens_are_not_equal():
    a = hash_block_tokens(None, [1, 2])
    b = hash_block_tokens(None, [2, 1])
    b.value = a.value  # simulate a collision of the 64-bit chain
    assert a != b


def test_extend_hashes_full_blocks_only_and_incrementally():
    tokens = list(range(10))
    hashes = extend_block_hashes([], tokens, 4, 2)
    assert len(hashes) == 2
    assert hashes[1] == hash_block_tokens(hashes[0], [4, 5, 6, 7])
    first = hashes[0]
    extend_block_hashes(hashes, tokens + [10, 11], 4, 3)
    assert hashes[0] is first and len(hashes) == 3
    with pytest.raises(ValueError):
        extend_block_hashes(hashes, tokens, 4, 3)
