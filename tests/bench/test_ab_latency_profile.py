"""benchmarks/ab_latency.py's step profile: how each kernel moves a step's end (pure functions;
the profiling itself needs CUDA)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import ab_latency  # noqa: E402


def test_increments_add_up_to_the_span_and_charge_the_kernel_that_ends_later():
    # a GEMV, a norm launched early under PDL (starts inside the GEMV, ends after it), a second
    # GEMV that starts before the norm ends, and a kernel wholly inside the second GEMV
    kernels = [("gemv<float>(int)", 0.0, 10.0), ("norm", 8.0, 12.0), ("gemv<float>(int)", 11.0, 20.0),
               ("tiny", 13.0, 14.0)]
    incs = ab_latency.step_increments(kernels)
    assert incs == {"gemv": [10.0, 8.0], "norm": [2.0], "tiny": [0.0]}
    assert sum(sum(v) for v in incs.values()) == pytest.approx(20.0)


def test_launch_order_is_start_order():
    incs = ab_latency.step_increments([("b", 5.0, 9.0), ("a", 0.0, 6.0)])
    assert incs == {"a": [6.0], "b": [3.0]}


def test_summary_is_per_step_and_largest_first():
    kernels = [("gemv", 0.0, 10.0), ("norm", 10.0, 11.0), ("gemv", 11.0, 21.0), ("norm", 21.0, 22.0)]
    summary = ab_latency.summarize_profile(kernels, steps=2)
    assert summary["span_us_per_step"] == pytest.approx(11.0)
    assert [k["name"] for k in summary["kernels"]] == ["gemv", "norm"]
    assert summary["kernels"][0] == {"name": "gemv", "launches_per_step": 1.0, "us_per_step": 10.0}
