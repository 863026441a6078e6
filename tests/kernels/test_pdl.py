"""Which launches use programmatic dependent launch (KILN_PDL); no GPU needed."""

import torch

from kiln import kernels


def test_pdl_is_off_on_the_cpu_and_by_default_outside_the_scope(monkeypatch):
    t = torch.zeros(1)
    monkeypatch.delenv("KILN_PDL", raising=False)
    assert kernels.pdl_args(t) == {"PDL": False}
    with kernels.pdl_scope(True):
        assert kernels.pdl_args(t) == {"PDL": False}  # CPU tensors never launch with PDL
    monkeypatch.setenv("KILN_PDL", "1")
    assert not kernels.pdl_enabled(t)


def test_pdl_scope_nests_and_restores():
    assert kernels._PDL_SCOPE[0] is False
    with kernels.pdl_scope(True):
        assert kernels._PDL_SCOPE[0] is True
        with kernels.pdl_scope(False):
            assert kernels._PDL_SCOPE[0] is False
        assert kernels._PDL_SCOPE[0] is True
    assert kernels._PDL_SCOPE[0] is False
