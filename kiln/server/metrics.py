"""Prometheus metrics under vLLM's names with a ``kiln:`` prefix, in a per-app registry.

Request timings arrive from the engine thread (``ServerMetrics`` implements the AsyncEngine's
observer protocol; prometheus-client metrics are thread-safe). Gauges and engine counters are read
from the engine's last stats snapshot at scrape time, so a scrape never touches the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger("kiln.metrics")

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0)


class _EngineCollector(Collector):
    """Scrape-time gauges and counters from the engine's stats snapshot, plus GPU memory via NVML."""

    def __init__(self, stats: Callable[[], dict], model_name: str):
        self._stats = stats
        self._model = model_name
        self._nvml = _open_nvml()

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        labels = ["model_name"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"kiln:{name}", doc, labels=labels)
            g.add_metric([self._model], float(value))
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(f"kiln:{name}", doc, labels=labels)
            c.add_metric([self._model], float(value))
            return c

        yield gauge("num_requests_running", "Requests in the running batch.", s.get("num_running", 0))
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", s.get("num_waiting", 0))
        yield gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).",
                    s.get("kv_cache_usage", 0.0))
        yield counter("num_preemptions", "Requests preempted for lack of KV blocks.",
                      s.get("num_preemptions", 0))
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      s.get("prefix_cache_queries", 0))
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                      s.get("prefix_cache_hits", 0))
        if self._nvml is not None:
            yield from self._gpu_metrics()

    def _gpu_metrics(self) -> Iterator[Any]:
        pynvml, handles = self._nvml
        used = GaugeMetricFamily("kiln:gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        total = GaugeMetricFamily("kiln:gpu_memory_total_bytes", "GPU memory in total.", labels=["gpu"])
        util = GaugeMetricFamily("kiln:gpu_utilization_perc", "GPU busy fraction (0..1).",
                                 labels=["gpu"])
        for i, h in enumerate(handles):
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                rates = pynvml.nvmlDeviceGetUtilizationRates(h)
            except Exception:  # noqa: BLE001 - a flaky driver query must not break the scrape
                continue
            used.add_metric([str(i)], float(mem.used))
            total.add_metric([str(i)], float(mem.total))
            util.add_metric([str(i)], rates.gpu / 100.0)
        yield used
        yield total
        yield util


def _open_nvml() -> tuple[Any, list] | None:
    """NVML handles of the visible GPUs, or None without pynvml or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i)
                        for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - no driver or no GPU: simply no GPU metrics
        return None


class ServerMetrics:
    """All of one server's metrics; pass it as the AsyncEngine's observer."""

    def __init__(self, model_name: str, stats: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        r = self.registry
        self.prompt_tokens = Counter("kiln:prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=r).labels(model_name)
        self.generation_tokens = Counter("kiln:generation_tokens", "Tokens generated.", labels,
                                         registry=r).labels(model_name)
        self._success = Counter("kiln:request_success", "Requests finished, by finish reason.",
                                labels + ["finished_reason"], registry=r)
        self.ttft = Histogram("kiln:time_to_first_token_seconds", "Arrival to first token.",
                              labels, buckets=_LATENCY_BUCKETS, registry=r).labels(model_name)
        self.itl = Histogram("kiln:inter_token_latency_seconds", "Time between output tokens.",
                             labels, buckets=_ITL_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram("kiln:e2e_request_latency_seconds", "Arrival to finish.",
                             labels, buckets=_LATENCY_BUCKETS, registry=r).labels(model_name)
        self.queue_time = Histogram("kiln:request_queue_time_seconds",
                                    "Arrival to first scheduled.", labels,
                                    buckets=_LATENCY_BUCKETS, registry=r).labels(model_name)
        r.register(_EngineCollector(stats, model_name))

    # The AsyncEngine observer protocol (called from the engine thread).
    def record_first_token(self, ttft_s: float, queue_s: float) -> None:
        """Observe time to first token and queue time."""
        self.ttft.observe(ttft_s)
        self.queue_time.observe(queue_s)

    def record_inter_token(self, itl_s: float) -> None:
        """Observe one inter-token latency."""
        self.itl.observe(itl_s)

    def record_finished(self, e2e_s: float, num_prompt_tokens: int, num_generation_tokens: int,
                        finish_reasons: list[str]) -> None:
        """Count a finished (or aborted) request and its tokens."""
        self.e2e.observe(e2e_s)
        self.prompt_tokens.inc(num_prompt_tokens)
        self.generation_tokens.inc(num_generation_tokens)
        # One count per request: any "abort" wins, else the first choice's reason.
        reason = "abort" if "abort" in finish_reasons else (finish_reasons[0] if finish_reasons else "stop")
        self._success.labels(self.model_name, reason).inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
