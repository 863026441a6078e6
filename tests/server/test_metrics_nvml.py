"""GPU gauges come from NVML when it answers, and are simply absent when it does not."""

import sys
import types

from prometheus_client import generate_latest

from kiln.server.metrics import ServerMetrics


def _fake_pynvml(num_gpus=2, fail_init=False, fail_query_on=None):
    m = types.ModuleType("pynvml")

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    m.nvmlInit = init
    m.nvmlDeviceGetCount = lambda: num_gpus
    m.nvmlDeviceGetHandleByIndex = lambda i: i

    def mem(h):
        if h == fail_query_on:
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(used=(h + 1) * 1000, total=141 * 2**30)

    m.nvmlDeviceGetMemoryInfo = mem
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h)
    return m


def _scrape(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "pynvml", module)
    metrics = ServerMetrics("m", lambda: {"num_running": 1})
    return generate_latest(metrics.registry).decode()


def test_gpu_gauges_from_nvml(monkeypatch):
    text = _scrape(monkeypatch, _fake_pynvml())
    assert 'kiln:gpu_memory_used_bytes{gpu="0"} 1000.0' in text
    assert 'kiln:gpu_memory_used_bytes{gpu="1"} 2000.0' in text
    total = next(line for line in text.splitlines()
                 if line.startswith('kiln:gpu_memory_total_bytes{gpu="1"}'))
    assert float(total.split()[-1]) == 141 * 2**30
    assert 'kiln:gpu_utilization_perc{gpu="1"} 0.41' in text
    assert 'kiln:num_requests_running{model_name="m"} 1.0' in text


def test_no_gpu_gauges_without_a_driver(monkeypatch):
    text = _scrape(monkeypatch, _fake_pynvml(fail_init=True))
    assert "gpu_memory" not in text and "kiln:num_requests_running" in text


def test_a_failing_gpu_query_skips_that_gpu_only(monkeypatch):
    text = _scrape(monkeypatch, _fake_pynvml(fail_query_on=0))
    assert 'gpu="0"' not in text and 'kiln:gpu_memory_used_bytes{gpu="1"} 2000.0' in text
