"""Helpers for live-server tests: free ports, health polling, uvicorn with the kiln app in a thread,
and engines (the real one on a tiny random checkpoint when it can load, else the fake)."""

from __future__ import annotations

import importlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from server_fake_engine import FakeEngine

_REAL_ENGINE_MODULES = ("kiln.engine.llm_engine", "kiln.models.random_model", "kiln.models.loader",
                        "kiln.runner.model_runner", "kiln.scheduler.scheduler")


def real_engine_available() -> bool:
    """True when every module the real engine needs can be imported."""
    try:
        for name in _REAL_ENGINE_MODULES:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, timeout: float = 120.0, proc: Any = None) -> None:
    """Poll /health until it says 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{base_url} did not become healthy")


class ThreadServer:
    """uvicorn with the kiln app, in a background thread (signals stay with pytest)."""

    def __init__(self, engine: Any, max_waiting_requests: int | None = None,
                 stall_timeout: float = 60.0, shutdown_timeout: float = 10.0,
                 api_key: str | None = None):
        import uvicorn

        from kiln.engine.async_engine import AsyncEngine
        from kiln.server.app import ServerState, build_app
        from kiln.server.lifecycle import DrainingServer
        from kiln.server.metrics import ServerMetrics

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.state = ServerState(api_key=api_key)
        holder: dict[str, AsyncEngine] = {}
        self.metrics = ServerMetrics(engine.model_name, stats=lambda: holder["e"].stats())
        self.engine = AsyncEngine(engine, max_waiting_requests=max_waiting_requests,
                                  stall_timeout_s=stall_timeout, observer=self.metrics)
        holder["e"] = self.engine
        app = build_app(self.state)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2, lifespan="off")
        self.server = DrainingServer(config, self.state, shutdown_timeout)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.engine.start()
        self.state.attach(self.engine, self.metrics)
        self.thread.start()
        wait_healthy(self.base_url, timeout=30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.shutdown(0.0)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def client(self, **kw: Any) -> Any:
        """An official openai client for this server."""
        import openai
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, **kw)


@contextmanager
def thread_server(engine: Any, **kw: Any) -> Iterator[ThreadServer]:
    """A ThreadServer as a context manager."""
    with ThreadServer(engine, **kw) as srv:
        yield srv


def make_engine_factory(tiny_checkpoint: Path | None) -> Callable[..., Any]:
    """make(max_model_len=, max_num_seqs=, step_delay=, enable_prefix_caching=) -> an engine.

    The real engine when ``tiny_checkpoint`` is given, else the fake; step_delay only slows the
    fake, standing in for a real model's step time.
    """
    def make(max_model_len: int = 256, max_num_seqs: int = 8, step_delay: float = 0.002,
             enable_prefix_caching: bool = True) -> Any:
        if tiny_checkpoint is None:
            return FakeEngine(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                              step_delay=step_delay)
        from kiln.engine.llm_engine import LLMEngine
        # A small KV cache keeps the CPU reference attention fast.
        blocks = max(64, 2 * max_num_seqs * (-(-max_model_len // 16)))
        return LLMEngine.from_args(str(tiny_checkpoint), dtype="float32", device="cpu",
                                   max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max(512, max_model_len),
                                   num_kv_blocks=blocks, enable_prefix_caching=enable_prefix_caching)
    return make
