"""Chained hashes of full KV blocks: the keys of the prefix cache."""

from __future__ import annotations

from collections.abc import Sequence

# The parent of a sequence's first block. A fixed integer (not None) so that the hash of a first
# block does not depend on an object address, whatever the Python version.
ROOT_PARENT_HASH = 0x6B696C6E


class BlockHash:
    """The identity of one full block: its chained hash plus its own token ids.

    ``value`` is ``hash((parent_value, token_ids))``, so it covers every token before the block as
    well as the block's own. Equality also compares the block's tokens, which makes a false prefix
    hit need a 64-bit collision of the parent chain *and* identical block tokens.
    """

    __slots__ = ("value", "token_ids")

    def __init__(self, parent_value: int, token_ids: Sequence[int]):
        self.token_ids: tuple[int, ...] = tuple(token_ids)
        self.value: int = hash((parent_value, self.token_ids))

    def __hash__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockHash):
            return NotImplemented
        return self.value == other.value and self.token_ids == other.token_ids

    def __repr__(self) -> str:
        return f"BlockHash({self.value:#x}, {len(self.token_ids)} tokens)"


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Hash one full block given the hash of the block before it (None for the first block)."""
    return BlockHash(ROOT_PARENT_HASH if parent is None else parent.value, token_ids)


def extend_block_hashes(hashes: list[BlockHash], token_ids: Sequence[int], block_size: int,
                        num_blocks: int) -> list[BlockHash]:
    """Append to ``hashes`` the chained hashes of blocks ``len(hashes) .. num_blocks - 1``.

    ``token_ids`` must hold at least ``num_blocks * block_size`` tokens; only full blocks are ever
    hashed. Returns ``hashes`` (changed in place) so that callers can keep one growing list per
    sequence and never hash a block twice.
    """
    if num_blocks * block_size > len(token_ids):
        raise ValueError(f"{num_blocks} full blocks of {block_size} need {num_blocks * block_size} "
                         f"tokens, only {len(token_ids)} given")
    for i in range(len(hashes), num_blocks):
        parent = hashes[i - 1] if i else None
        hashes.append(hash_block_tokens(parent, token_ids[i * block_size:(i + 1) * block_size]))
    return hashes
