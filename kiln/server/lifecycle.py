"""Run the server: engine loading behind a live socket, and graceful shutdown on a signal.

The socket opens before the model loads, so clients get 503 (not "connection refused") while it
loads. On SIGTERM or SIGINT the server turns away new calls with 503, lets in-flight generations
finish for up to the shutdown timeout, aborts what is left, and exits 0.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from kiln.engine.async_engine import AsyncEngine
from kiln.errors import KilnError
from kiln.server.app import DRAINING, READY, ServerState, build_app
from kiln.server.metrics import ServerMetrics

logger = logging.getLogger("kiln.server")


def serve(load_engine: Callable[[], Any], host: str = "127.0.0.1", port: int = 8000,
          served_model_name: str | None = None, max_waiting_requests: int | None = None,
          shutdown_timeout: float = 30.0, stall_timeout: float = 60.0,
          log_level: str = "info", api_key: str | None = None) -> int:
    """Serve the engine ``load_engine()`` returns (loaded after the socket opens); blocks until a
    signal drains and stops the server. Returns 0; a KilnError from loading is re-raised after the
    socket closes, any other load failure returns 1."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    state = ServerState(api_key=api_key)
    app = build_app(state)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5, lifespan="off")
    server = DrainingServer(config, state, shutdown_timeout)
    loader = threading.Thread(
        target=_load_and_attach, name="kiln-loader", daemon=True,
        args=(load_engine, state, server, served_model_name, max_waiting_requests, stall_timeout))
    loader.start()
    server.run()
    if state.engine is not None:
        state.engine.shutdown(timeout=0.0)
    if server.load_error is not None:
        if isinstance(server.load_error, KilnError):
            raise server.load_error  # the CLI prints it on one line and exits 2
        print(f"kiln serve: could not load the model: {server.load_error!r}", file=sys.stderr)
        return 1
    return 0


def _load_and_attach(load_engine: Callable[[], Any], state: Any, server: "DrainingServer",
                     served_model_name: str | None, max_waiting_requests: int | None,
                     stall_timeout: float) -> None:
    try:
        engine = load_engine()
        name = served_model_name or engine.model_name
        holder: dict[str, AsyncEngine] = {}
        metrics = ServerMetrics(name, stats=lambda: holder["engine"].stats())
        async_engine = AsyncEngine(engine, max_waiting_requests=max_waiting_requests,
                                   stall_timeout_s=stall_timeout, observer=metrics,
                                   served_model_name=name)
        holder["engine"] = async_engine
        async_engine.start()
    except BaseException as e:  # noqa: BLE001 - reported by serve() after the server stops
        if not isinstance(e, KilnError):  # a KilnError is re-raised for the CLI to print
            logger.exception("could not load the model")
        server.load_error = e
        server.should_exit = True
        return
    if server.drain_deadline is not None or server.should_exit:
        async_engine.shutdown(0.0)  # a signal arrived while loading: never start serving
        return
    state.attach(async_engine, metrics)
    logger.info("kiln serve: %s ready on http://%s:%d", name, server.config.host, server.config.port)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that drains on the first SIGTERM/SIGINT instead of closing at once.

    A second signal exits without waiting. The signal is not re-raised after shutdown, so a
    drained server exits with status 0.
    """

    def __init__(self, config: Any, state: Any, shutdown_timeout: float):
        super().__init__(config)
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        self.drain_deadline: float | None = None
        self.load_error: BaseException | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Start draining (first signal) or exit now (second signal, or not yet serving)."""
        if self.drain_deadline is not None or self.state.phase != READY:
            if self.drain_deadline is not None:
                self.force_exit = True
            self.drain_deadline = self.drain_deadline or time.monotonic()
            self.should_exit = True
            return
        logger.info("signal %d: draining for up to %.0f s", sig, self.shutdown_timeout)
        self.state.phase = DRAINING
        self.drain_deadline = time.monotonic() + self.shutdown_timeout

    async def on_tick(self, counter: int) -> bool:
        """Each 0.1 s: once draining, exit when nothing is in flight or time is up."""
        if self.drain_deadline is not None and not self.should_exit:
            engine = self.state.engine
            idle = self.state.num_in_flight == 0 and (engine is None or engine.num_in_flight() == 0)
            if idle or time.monotonic() >= self.drain_deadline:
                if not idle and engine is not None:
                    logger.warning("shutdown timeout: aborting %d requests", engine.num_in_flight())
                    engine.shutdown(timeout=0.0)
                self.should_exit = True
        return await super().on_tick(counter)
