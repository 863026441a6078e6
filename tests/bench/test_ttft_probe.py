"""benchmarks/profile/ttft_probe.py on a tiny checkpoint (CPU): per-request splits, the CPU
control, the thread list and the stack sampler."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "profile"))
import ttft_probe  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from kiln.models.random_model import write_random_model

    return str(write_random_model("tiny-llama", tmp_path_factory.mktemp("tiny") / "m",
                                  dtype="float32"))


def test_probe_splits_each_request_and_samples_the_launch(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "probe.json"
    switch = sys.getswitchinterval()
    monkeypatch.setattr(sys, "argv", ["ttft_probe.py", "--model", tiny_dir, "--input-len", "128",
                                      "--iters", "6", "--warmup", "1", "--sample", "--label", "t",
                                      "--json", str(out)])
    try:
        ttft_probe.main()
    finally:
        sys.setswitchinterval(switch)
    r = json.loads(out.read_text())
    assert r["iters"] == 6 and len(r["iterations"]) == 6 and r["input_len"] == 128
    for it in r["iterations"]:
        # The launch is part of the request; no CUDA here, so no device span.
        assert 0 < it["launch_ms"] <= it["total_ms"]
        assert it["cpu_control_ms"] > 0 and it["span_ms"] is None
    assert r["total_ms"]["min"] <= r["total_ms"]["median"] <= r["total_ms"]["max"]
    assert "span_ms" not in r
    assert "MainThread" in r["python_threads"] and "ttft-probe-sampler" in r["python_threads"]
    # On a CPU the profiled request's "kernels" are its aten ops.
    assert r["kernel_ms_one_request"] > 0
    samples = r["stack_samples"]
    assert samples["samples"] > 0
    assert sum(n for _, n, _ in samples["innermost"]) <= samples["samples"]
    # The launch runs the model, so some samples fall in kiln's own files.
    assert any(where.split(":")[0].endswith(".py") and where != "(outside kiln)"
               for where, _, _ in samples["innermost_kiln"])
    text = capsys.readouterr().out
    assert "== t: 128-token prompt, 6 requests" in text and "stack samples" in text


def test_stack_sampler_takes_nothing_while_inactive():
    s = ttft_probe.StackSampler(interval=0.001)
    switch = sys.getswitchinterval()
    try:
        s.start()
        sum(range(200_000))
        s.stop.set()
        s.thread.join(1.0)
    finally:
        sys.setswitchinterval(switch)
    assert s.samples == 0 and s.report()["innermost"] == []
