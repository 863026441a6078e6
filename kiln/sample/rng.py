"""Counter-based random numbers for sampling: uniforms from a hash of (seed, output_index, counter).

Why a hash and not ``torch.Generator``:

* A request's samples must depend only on its own seed and on which output token is being drawn,
  never on the batch it happens to share, the step, a preemption and recompute, or the device. A
  stateful generator advances with everything drawn before, so any of those would change it.
* One generator per request means one kernel launch per row; a hash is a few elementwise ops over
  the whole ``[B, V]`` batch at once.
* Nothing is read back to the host, so sampling never stalls the GPU queue.

How: each row's (seed, output_index) is absorbed into two independent 32-bit keys (a 64-bit row
state, so two different requests share a noise row with odds of about 2**-64), then every counter
(the token id) is mixed with those keys through a 32-bit integer finaliser (xorshift-multiply, the
shape of the well-known "lowbias32" hash). The top 23 bits become a float32 uniform in (0, 1).

Everything runs on torch int64 tensors, which are signed. To stay clear of signed overflow every
value that is shifted or multiplied lies in [0, 2**32), every multiplier is below 2**31 (so a
product stays below 2**63), and the results are masked back to 32 bits. Negative inputs (seeds) are
split into 32-bit lanes with a mask and an exact division, never by right-shifting a negative number.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31. The first is lowbias32's first multiplier; the second was picked for
# avalanche bias at the measurement floor (about 5e-4 rms over 2**20 inputs) among odd constants < 2**31.
_MUL_1 = 0x7FEB352D
_MUL_2 = 0x3AEB535D
# Odd, so that token id -> token id * _TOKEN_STRIDE mod 2**32 is a bijection (distinct tokens never
# collide before mixing); spreads consecutive ids over the whole 32-bit range.
_TOKEN_STRIDE = 0x9E3779B9
# Distinct starting states for the two key chains, so the two 32-bit keys are independent.
_KEY_INIT_1 = 0x243F6A88
_KEY_INIT_2 = 0x13198A2E
_TWO_POW_32 = 1 << 32
_UNIT_SCALE = 2.0 ** -24


def mix32(x: Tensor) -> Tensor:
    """Hash int64 values in [0, 2**32) to well-mixed int64 values in [0, 2**32) (a bijection).

    xorshift-multiply-xorshift-multiply-xorshift; each input bit flips each output bit with odds
    close to one half.
    """
    x = x ^ (x >> 16)
    x = (x * _MUL_1) & MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL_2) & MASK32
    return x ^ (x >> 16)


def split_u32_lanes(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split int64 values (any sign) into their low and high 32-bit halves, each in [0, 2**32).

    The high half comes from an exact division of ``x - low`` (a multiple of 2**32) rather than a
    right shift, whose behaviour on negative numbers we do not want to depend on.
    """
    low = x & MASK32
    high = torch.div(x - low, _TWO_POW_32, rounding_mode="floor") & MASK32
    return low, high


def row_keys(seeds: Tensor, output_index: Tensor) -> tuple[Tensor, Tensor]:
    """Two independent 32-bit keys per row from (seed, output_index), each ``[B]`` int64.

    Each key is a chain that absorbs the four 32-bit lanes one at a time (xor, then mix), started
    from a different constant.
    """
    lanes = (*split_u32_lanes(seeds.to(torch.int64)), *split_u32_lanes(output_index.to(torch.int64)))
    keys = []
    for init in (_KEY_INIT_1, _KEY_INIT_2):
        state = torch.full_like(lanes[0], init)
        for lane in lanes:
            state = mix32(state ^ lane)
        keys.append(state)
    return keys[0], keys[1]


def hash_bits(seeds: Tensor, output_index: Tensor, counters: Tensor) -> Tensor:
    """32 random bits (int64 in [0, 2**32)) for each (row, counter).

    ``seeds`` and ``output_index`` are ``[B]``; ``counters`` (non-negative, below 2**31) is
    ``[N]`` (shared by all rows) or ``[B, N]``. Returns ``[B, N]``.
    """
    key_1, key_2 = row_keys(seeds, output_index)
    spread = counters.to(torch.int64) * _TOKEN_STRIDE
    x = ((spread + key_1[:, None]) & MASK32) ^ key_2[:, None]
    return mix32(x)


def bits_to_unit_interval(bits: Tensor) -> Tensor:
    """Map 32-bit hash values to float32 uniforms strictly inside (0, 1).

    Takes the top 23 bits m and returns (2m + 1) / 2**24: an odd 24-bit integer converts to float32
    exactly and the scale is a power of two, so there is no rounding at all and the extremes are
    2**-24 and 1 - 2**-24 — never 0 (log would give inf) nor 1 (the exponential noise would be 0).
    """
    odd = (bits >> 8) | 1
    return odd.to(torch.float32) * _UNIT_SCALE


def uniform(seeds: Tensor, output_index: Tensor, counters: Tensor) -> Tensor:
    """Float32 uniforms in (0, 1), ``[B, N]``, that depend only on (seed, output_index, counter)."""
    return bits_to_unit_interval(hash_bits(seeds, output_index, counters))


def exponential(seeds: Tensor, output_index: Tensor, vocab_size: int) -> Tensor:
    """Standard exponential noise E = -log(U), ``[B, vocab_size]`` float32, one per (row, token id).

    ``argmax(probs / E)`` over a row draws a token with probability ``probs`` (the exponential race).
    """
    token_ids = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    noise = uniform(seeds, output_index, token_ids).log_()
    return noise.neg_()
