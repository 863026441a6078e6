"""The bench commands' GPU clock sampler (`kiln.bench.clocks`), against a stand-in nvidia-smi."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import time

import pytest
import torch

from kiln.bench import clocks

# A stand-in for nvidia-smi: one line for a plain query, a line every 50 ms under -lms. FAKE_SM
# and FAKE_MASK set what it reports; FAKE_OLD=1 refuses the newer reasons field, as older
# drivers do; FAKE_ONLY=T answers for the target T alone.
FAKE = textwrap.dedent("""\
    #!{python}
    import os, sys, time
    args = sys.argv[1:]
    fields = next(a.split("=", 1)[1] for a in args if a.startswith("--query-gpu="))
    target = args[args.index("-i") + 1]
    if os.environ.get("FAKE_ONLY", target) != target:
        print("No devices were found", file=sys.stderr)
        sys.exit(6)
    if os.environ.get("FAKE_OLD") == "1" and "clocks_event_reasons" in fields:
        print("Field is not a valid field to query.", file=sys.stderr)
        sys.exit(2)
    def line():
        if fields.startswith("clocks.max.sm"):
            return "1980, 700.00"
        now = time.time()
        ts = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)) + ".%03d" % int(now % 1 * 1000)
        row = [ts, os.environ.get("FAKE_SM", "1500"), "650.5"]
        if "reasons" in fields:
            row.append(os.environ.get("FAKE_MASK", "0x0000000000000004"))
        return ", ".join(row)
    if "-lms" in args:
        while True:
            print(line(), flush=True)
            time.sleep(0.05)
    print(line())
    """)


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    path = tmp_path / "bin" / "nvidia-smi"
    path.parent.mkdir()
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{path.parent}{os.pathsep}{os.environ['PATH']}")
    return path


def test_reason_names():
    assert clocks.reason_names(0x4) == ["power cap"]
    assert clocks.reason_names(0x5) == ["idle", "power cap"]
    assert clocks.reason_names(0x48) == ["hardware slowdown", "thermal (hardware)"]
    assert clocks.reason_names(0x1004) == ["power cap", "0x1000"]
    assert clocks.reason_names(0) == []


def test_parse_sample_and_summarize():
    s = clocks.parse_sample("2026/12/06 20:51:03.250, 1515, 689.00, 0x0000000000000004")
    assert s is not None and s[1:] == (1515.0, 689.0, 4)
    assert s[0] == pytest.approx(time.mktime(time.strptime("2026/12/06 20:51:03", "%Y/%m/%d %H:%M:%S"))
                                 + 0.25)
    assert clocks.parse_sample("2026/12/06 20:51:03.250, [N/A], 689.00") is None
    assert clocks.parse_sample("not a line") is None
    assert clocks.parse_sample("2026/12/06 20:51:03, 1500, 600")[3] is None
    summary = clocks.summarize([(0.0, 1500.0, 600.0, 4), (0.1, 1300.0, 700.0, 1), (0.2, 1900.0, 650.0, 0)])
    assert summary == {"samples": 3, "sm_mhz_mean": pytest.approx(1566.6667, rel=1e-4),
                       "sm_mhz_min": 1300.0, "sm_mhz_max": 1900.0,
                       "power_w_mean": pytest.approx(650.0), "power_w_max": 700.0,
                       "reasons": ["power cap"]}  # idle is not a reason worth reporting
    assert clocks.summarize([(0.0, 1500.0, 600.0, None)])["reasons"] is None
    assert clocks.summarize([]) is None


def test_sampler_reports_each_phase_and_the_limits(fake_smi, monkeypatch):
    monkeypatch.setenv("FAKE_SM", "1515")
    sampler = clocks.ClockSampler("0")
    assert sampler.active
    sampler.mark("warm-up")
    time.sleep(0.4)
    sampler.mark("run")
    time.sleep(0.6)
    closed = sampler.close()
    assert closed["limits"] == {"sm_mhz_max": 1980.0, "power_w_limit": 700.0}
    run = closed["phases"]["run"]
    assert run["samples"] >= 3 and run["sm_mhz_mean"] == 1515.0 and run["reasons"] == ["power cap"]
    assert closed["phases"]["warm-up"]["samples"] >= 1
    assert not sampler.active and sampler.close() is None
    line = clocks.describe(run, closed["limits"])
    assert line.startswith("SM clock 1515 MHz mean (1515-1515 of 1980), power 650 W mean")
    assert line.endswith("of a 700 W limit; clock-event reasons: power cap")


def test_sampler_falls_back_to_the_older_reasons_field(fake_smi, monkeypatch):
    monkeypatch.setenv("FAKE_OLD", "1")
    monkeypatch.setenv("FAKE_MASK", "0x0000000000000040")
    sampler = clocks.ClockSampler("0")
    sampler.mark("run")
    time.sleep(0.4)
    summary = clocks.finish(sampler)
    assert summary["reasons"] == ["thermal (hardware)"]
    assert summary["limits"]["power_w_limit"] == 700.0


def test_sampler_takes_the_first_target_that_nvidia_smi_answers_for(fake_smi, monkeypatch):
    monkeypatch.setenv("FAKE_ONLY", "0")
    sampler = clocks.ClockSampler(["GPU-not-this-one", "00000000:1B:00.0", "0"])
    assert sampler.active and sampler.target == "0"
    sampler.mark("run")
    time.sleep(0.3)
    assert clocks.finish(sampler)["samples"] >= 1
    nobody = clocks.ClockSampler(["GPU-not-this-one", "7"])
    assert not nobody.active and nobody.target is None and clocks.finish(nobody) is None


def test_nothing_sampled_without_nvidia_smi_or_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi there
    for sampler in (clocks.ClockSampler("0"), clocks.ClockSampler(None),
                    clocks.start(torch.device("cpu")), clocks.start(torch.device("cpu"), enabled=False)):
        assert not sampler.active
        sampler.mark("run")
        assert clocks.finish(sampler) is None
    assert clocks.smi_targets(torch.device("cpu")) == []
    assert clocks.describe(None) == "no samples"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from kiln.models.random_model import write_random_model

    return str(write_random_model("tiny-llama", tmp_path_factory.mktemp("tiny") / "m",
                                  dtype="float32"))


@pytest.mark.parametrize("bench", ["latency", "throughput"])
def test_bench_commands_report_the_clocks(bench, tiny_dir, fake_smi, tmp_path, capsys, monkeypatch):
    """The CLI's timed runs carry the sampled clocks into the JSON and the summary (the CPU run
    pointed at the stand-in as if it were the device's card); --no-gpu-clocks turns it off."""
    from kiln.cli import main

    monkeypatch.setattr(clocks, "smi_targets", lambda device: ["0"])
    monkeypatch.setenv("FAKE_SM", "1234")
    common = ["--model", tiny_dir, "--no-progress", "--input-len", "16"]
    if bench == "latency":
        common += ["--output-len", "64", "--num-iters", "3", "--num-iters-warmup", "1"]
        label = "GPU while timed: SM clock 1234 MHz"
    else:
        common += ["--output-len", "32", "--num-prompts", "32", "--max-num-seqs", "4"]
        label = "GPU during the run: SM clock 1234 MHz"
    out = tmp_path / "on.json"
    assert main(["bench", bench, *common, "--json", str(out)]) in (0, None)
    r = json.loads(out.read_text())
    g = r["gpu_clocks"]
    assert g["samples"] >= 1 and g["sm_mhz_mean"] == 1234.0 and g["limits"]["sm_mhz_max"] == 1980.0
    assert label in capsys.readouterr().out
    off = tmp_path / "off.json"
    assert main(["bench", bench, *common, "--no-gpu-clocks", "--json", str(off)]) in (0, None)
    assert "gpu_clocks" not in json.loads(off.read_text())
    assert "SM clock" not in capsys.readouterr().out


def test_gemm_gap_script_reports_its_phases_but_not_idle_ones(fake_smi, capsys):
    """benchmarks/profile/gemm_gap.py samples through the same code; its idle-* gaps are left out."""
    from benchmarks.profile.gemm_gap import ClockLog

    log = ClockLog()
    log.mark("engine-run")
    time.sleep(0.3)
    log.mark("idle-1")
    time.sleep(0.2)
    log.mark("burst")
    time.sleep(0.3)
    phases = log.close()
    assert sorted(phases) == ["burst", "engine-run"]
    assert phases["burst"]["reasons"] == ["power cap"] and log.limits["power_w_limit"] == 700.0
    assert "-- idle-1" in capsys.readouterr().out


def test_targets_of_a_cuda_device(monkeypatch):
    """UUID (with nvidia-smi's GPU- prefix), PCI address, CUDA_VISIBLE_DEVICES entry, index."""
    class Props:
        uuid = "8ad1c2e0-1111-2222-3333-444455556666"
        pci_domain_id, pci_bus_id, pci_device_id = 0, 0x1B, 0

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert clocks.smi_targets(torch.device("cuda", 1)) == [
        "GPU-8ad1c2e0-1111-2222-3333-444455556666", "00000000:1B:00.0", "5", "1"]
    Props.uuid = ""
    del Props.pci_bus_id
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert clocks.smi_targets(torch.device("cuda", 0)) == ["0"]


def test_a_sampler_dropped_without_close_stops_nvidia_smi(fake_smi):
    """A benchmark that raises between start and close leaves no sampler running."""
    import gc

    sampler = clocks.ClockSampler("0")
    proc, path = sampler.proc, sampler.path
    assert proc.poll() is None and path.exists()
    del sampler
    gc.collect()
    assert proc.wait(timeout=10) is not None and not path.exists()
