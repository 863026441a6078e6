"""The host side of the int4 ring prototype (benchmarks/kernels/proto_ring_int4.py): its
K-group-major copy of the group scales and its table. The kernel is Gluon (GPU only)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "kernels"))

import proto_ring_int4 as ring  # noqa: E402


def test_scales_are_copied_group_major_with_their_offsets():
    chain = ring.Chain(ring.CHECK_SHAPES, "cpu", kind="int4")
    st, offs = ring.scales_kn(chain)
    for ph, (_, n, k) in enumerate(ring.CHECK_SHAPES):
        groups = k // ring.GROUP
        got = st[offs[ph]:offs[ph] + groups * n].view(groups, n)
        assert torch.equal(got, chain.w_scales(ph).t())
    r = ring.RingInt4(chain)
    assert r.table[:, 5].tolist() == offs
    assert torch.equal(r.table[:, :5], chain.table[:, :5])
    assert r.xp == 128  # 768 / 8 = 96 blocks, to a power of two
