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


def test_early_pdl_is_a_launch_argument_only_under_pdl(monkeypatch):
    t = torch.zeros(1)
    monkeypatch.setenv("KILN_PDL_EARLY", "1")
    assert kernels.pdl_args(t) == {"PDL": False}  # no PDL on the CPU: nothing early either
    assert kernels.pdl_early()
    monkeypatch.setenv("KILN_PDL_EARLY", "0")
    assert not kernels.pdl_early()


def test_gemv_prefetch_only_under_pdl_and_on_aligned_rows(monkeypatch):
    from kiln.kernels import qmm_common

    w = torch.zeros(64, 4096, dtype=torch.uint8)
    on = {"PDL": 1, "launch_pdl": True}
    monkeypatch.delenv("KILN_GEMV_PREFETCH", raising=False)
    assert qmm_common.prefetch_steps(w, 64, on) == {}  # off by default
    monkeypatch.setenv("KILN_GEMV_PREFETCH", "3")
    assert qmm_common.prefetch_steps(w, 64, on) == {"PREFETCH": 3}
    monkeypatch.setenv("KILN_GEMV_PREFETCH_MB", "16")
    assert qmm_common.prefetch_steps(w, 64, on) == {"PREFETCH": 3, "PREFETCH_MB": 16}
    assert qmm_common.prefetch_steps(w, 64, {"PDL": False}) == {}  # nothing runs before the wait
    assert qmm_common.prefetch_steps(w, 24, on) == {}  # a step that is not 16-byte aligned
    assert qmm_common.prefetch_steps(torch.zeros(64, 4100, dtype=torch.uint8), 64,
                                     on) == {}  # row stride
    assert qmm_common.prefetch_steps(w.view(-1)[8:8 + 64 * 4080].view(64, 4080), 64,
                                     on) == {}  # address


def test_small_kernels_trigger_before_their_wait_only_when_asked(monkeypatch):
    import torch

    from kiln import kernels
    t = torch.zeros(1)
    monkeypatch.setattr(kernels, "pdl_enabled", lambda x: True)  # as on an sm_90 GPU under PDL
    monkeypatch.delenv("KILN_PDL_TRIGGER", raising=False)
    monkeypatch.delenv("KILN_PDL_EARLY", raising=False)
    assert kernels.pdl_args(t, small=True) == {"PDL": 1, "launch_pdl": True}
    monkeypatch.setenv("KILN_PDL_TRIGGER", "exit")  # no longer a mode: the default
    assert kernels.pdl_args(t, small=True) == {"PDL": 1, "launch_pdl": True}
    monkeypatch.setenv("KILN_PDL_TRIGGER", "early")
    assert kernels.pdl_args(t, small=True) == {"PDL": 2, "launch_pdl": True}
    assert kernels.pdl_args(t) == {"PDL": 1, "launch_pdl": True}  # GEMVs keep their trigger
    monkeypatch.setattr(kernels, "pdl_enabled", lambda x: False)
    assert kernels.pdl_args(t, small=True) == {"PDL": False}
