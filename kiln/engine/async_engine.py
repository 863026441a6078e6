"""AsyncEngine: runs the synchronous LLMEngine loop in its own thread beside an asyncio server.

The engine thread is the only caller of ``LLMEngine`` methods (they are not thread-safe). Requests
and aborts reach it through a thread-safe command queue; outputs go back to each request's own
``asyncio.Queue`` through ``loop.call_soon_threadsafe``. Tokenizing, HTTP and JSON therefore never
wait for a GPU step, and a GPU step never waits for a slow client.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from kiln.errors import KilnError
from kiln.request import RequestOutput
from kiln.sampling_params import SamplingParams

logger = logging.getLogger("kiln.async_engine")


class EngineDeadError(RuntimeError):
    """The engine loop is not running (a step raised, or the engine was shut down)."""


class QueueFullError(KilnError):
    """Admission control refused a request: too many requests are already waiting."""


class EngineObserver(Protocol):
    """Receives per-request timings from the engine thread (the metrics side implements it)."""

    def record_first_token(self, ttft_s: float, queue_s: float) -> None:
        """The request's first output token arrived ``ttft_s`` after arrival."""

    def record_inter_token(self, itl_s: float) -> None:
        """One output token after the first of its sequence, ``itl_s`` after the previous one."""

    def record_finished(self, e2e_s: float, num_prompt_tokens: int, num_generation_tokens: int,
                        finish_reasons: list[str]) -> None:
        """The request left the engine (finished or aborted)."""


_ADDED = object()  # sentinel: the engine thread accepted the request


@dataclass
class _Tracked:
    """Engine-thread bookkeeping for one request: timings for metrics, token counts per sequence."""

    arrival: float
    num_prompt_tokens: int = 0
    first_token_time: float | None = None
    last_token_time: dict[int, float] = field(default_factory=dict)
    num_tokens: dict[int, int] = field(default_factory=dict)


class RequestStream:
    """The outputs of one request, as an async iterator; closing it early aborts the request."""

    def __init__(self, engine: "AsyncEngine", request_id: str, loop: asyncio.AbstractEventLoop):
        self.request_id = request_id
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = loop
        self.finished = False
        self._closed = False

    def _put_threadsafe(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            pass

    async def _wait_added(self) -> None:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._closed = True
            raise item

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished or self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._closed = True
            self._engine._forget(self.request_id)
            raise item
        if item.finished:
            self.finished = True
            self._engine._forget(self.request_id)
        return item

    async def aclose(self) -> None:
        """Stop listening; aborts the request in the engine if it has not finished."""
        self.close()

    def close(self) -> None:
        """Synchronous ``aclose`` (safe to call from ``finally`` blocks of cancelled tasks)."""
        if self._closed:
            return
        self._closed = True
        if not self.finished:
            self._engine.abort(self.request_id)
        self._engine._forget(self.request_id)


class AsyncEngine:
    """Drive an ``LLMEngine`` from a background thread for asyncio callers.

    ``max_waiting_requests`` bounds requests that are queued but not running (``QueueFullError``
    beyond it). ``stall_timeout_s``: if work is waiting and no step has finished for this long, the
    engine reports unhealthy.
    """

    def __init__(self, engine: Any, max_waiting_requests: int | None = None,
                 stall_timeout_s: float = 60.0, observer: EngineObserver | None = None,
                 served_model_name: str | None = None):
        self.engine = engine
        self._served_model_name = served_model_name
        self.max_waiting_requests = max_waiting_requests
        self.stall_timeout_s = stall_timeout_s
        self.observer = observer
        self._commands: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._tracked: dict[str, _Tracked] = {}  # engine thread only
        self._num_unprocessed_adds = 0
        self._num_added_since_stats = 0
        self._stats: dict = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._accepting = True
        self._dead_error: BaseException | None = None
        self._last_progress = time.monotonic()
        self._busy = False

    # ------------------------------------------------------------------------- read-only passthrough
    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer (safe to read from any thread)."""
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        """The served model name."""
        return self._served_model_name or self.engine.model_name

    @property
    def max_model_len(self) -> int:
        """The context limit in tokens (prompt plus output)."""
        return self.engine.max_model_len

    # -------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if self._thread is not None:
            return
        self._refresh_stats()
        self._thread = threading.Thread(target=self._run, name="kiln-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 0.0) -> None:
        """Stop accepting requests, let in-flight ones finish for up to ``timeout`` seconds, abort
        the rest (their callers get ``EngineDeadError``), and stop the thread."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while self.num_in_flight() and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, timeout))
        self._fail_all(EngineDeadError("the server is shutting down"))

    def is_alive(self) -> bool:
        """True while the engine thread runs and no step has failed."""
        return (self._thread is not None and self._thread.is_alive() and self._dead_error is None
                and not self._stop.is_set())

    def is_healthy(self) -> bool:
        """Alive, and if work is waiting, a step finished within ``stall_timeout_s``."""
        if not self.is_alive():
            return False
        if self._busy and time.monotonic() - self._last_progress > self.stall_timeout_s:
            return False
        return True

    @property
    def dead_error(self) -> BaseException | None:
        """The exception that killed the engine loop, if one did."""
        return self._dead_error

    def num_in_flight(self) -> int:
        """Requests submitted through this object that have not finished or been closed."""
        with self._lock:
            return len(self._streams)

    def stats(self) -> dict:
        """The engine's stats as of its last step, plus ``num_in_flight`` and ``healthy``."""
        with self._lock:
            s = dict(self._stats)
            s["num_in_flight"] = len(self._streams)
        s["healthy"] = self.is_healthy()
        return s

    def num_waiting_estimate(self) -> int:
        """Requests not yet running: submitted but not seen by the engine, plus its waiting queue."""
        with self._lock:
            return (self._num_unprocessed_adds + self._num_added_since_stats
                    + int(self._stats.get("num_waiting", 0)))

    # --------------------------------------------------------------------------------- requests
    async def add_request(self, prompt: str | list[int] | dict, params: SamplingParams,
                          request_id: str | None = None,
                          arrival_time: float | None = None) -> RequestStream:
        """Submit a request and wait until the engine has accepted it.

        Raises the engine's ``InvalidRequestError`` for bad input, ``QueueFullError`` when
        admission control refuses, ``EngineDeadError`` when the loop is not running.
        """
        if self._thread is None:
            raise EngineDeadError("the engine has not been started")
        if not self._accepting or not self.is_alive():
            raise EngineDeadError(self._dead_message())
        request_id = request_id or uuid.uuid4().hex
        stream = RequestStream(self, request_id, asyncio.get_running_loop())
        with self._lock:
            if request_id in self._streams:
                raise KilnError(f"request id {request_id!r} is already in flight")
            waiting = (self._num_unprocessed_adds + self._num_added_since_stats
                       + int(self._stats.get("num_waiting", 0)))
            if self.max_waiting_requests is not None and waiting >= self.max_waiting_requests:
                raise QueueFullError(f"{waiting} requests are already waiting (limit "
                                     f"{self.max_waiting_requests}); retry later")
            self._streams[request_id] = stream
            self._num_unprocessed_adds += 1
        arrival = time.monotonic() if arrival_time is None else arrival_time
        self._commands.put(("add", request_id, prompt, params, arrival))
        try:
            await stream._wait_added()
        except BaseException:
            # Cancelled while waiting (client gone) or refused: make sure nothing lingers.
            stream.close()
            raise
        return stream

    async def generate(self, prompt: str | list[int] | dict, params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative outputs until it finishes; aborts it if abandoned."""
        stream = await self.add_request(prompt, params, request_id)
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        """Abort a request (frees its KV blocks); unknown or finished ids are ignored."""
        self._commands.put(("abort", request_id))

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._streams.pop(request_id, None)

    def _dead_message(self) -> str:
        if self._dead_error is not None:
            return f"the engine loop died: {self._dead_error!r}"
        return "the engine is not accepting requests (starting or shutting down)"

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for s in streams:
            s._put_threadsafe(error)

    # ------------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        try:
            self._bind_device()
            while not self._stop.is_set():
                self._busy = self.engine.has_unfinished_requests()
                self._drain_commands(block=not self._busy)
                if self._stop.is_set():
                    break
                if not self.engine.has_unfinished_requests():
                    self._busy = False
                    self._last_progress = time.monotonic()
                    continue
                self._busy = True
                step_start = time.monotonic()
                outputs = self.engine.step()
                now = time.monotonic()
                self._last_progress = now
                self._refresh_stats()
                self._deliver(outputs, step_start, now)
        except BaseException as e:  # noqa: BLE001 - any failure of step() kills the loop
            logger.exception("engine loop died")
            self._dead_error = e
            err = EngineDeadError(f"the engine loop died: {e!r}")
            err.__cause__ = e
            self._fail_all(err)

    def _bind_device(self) -> None:
        # The current CUDA device is per thread: make this thread use the engine's device.
        device = getattr(self.engine, "device", None)
        if getattr(device, "type", None) == "cuda":
            import torch
            torch.cuda.set_device(device)

    def _drain_commands(self, block: bool) -> None:
        """Apply queued adds and aborts; when idle, wait (briefly) for the first one."""
        try:
            cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "add":
            _, request_id, prompt, params, arrival = cmd
            with self._lock:
                self._num_unprocessed_adds -= 1
                stream = self._streams.get(request_id)
            if stream is None:  # the caller gave up before the engine saw the request
                return
            try:
                self.engine.add_request(request_id, prompt, params, arrival_time=arrival)
            except Exception as e:  # noqa: BLE001 - bad input goes back to its caller only
                self._forget(request_id)
                stream._put_threadsafe(e)
                return
            with self._lock:
                self._num_added_since_stats += 1
            self._tracked[request_id] = _Tracked(arrival=arrival)
            stream._put_threadsafe(_ADDED)
        elif kind == "abort":
            request_id = cmd[1]
            self.engine.abort_request(request_id)
            tracked = self._tracked.pop(request_id, None)
            if tracked is not None and self.observer is not None:
                self.observer.record_finished(time.monotonic() - tracked.arrival,
                                              tracked.num_prompt_tokens,
                                              sum(tracked.num_tokens.values()), ["abort"])
            self._refresh_stats()

    def _refresh_stats(self) -> None:
        stats = dict(self.engine.stats())
        with self._lock:
            self._stats = stats
            self._num_added_since_stats = 0

    def _deliver(self, outputs: list[RequestOutput], step_start: float, now: float) -> None:
        for out in outputs:
            tracked = self._tracked.get(out.request_id)
            if tracked is not None:
                self._observe(tracked, out, step_start, now)
                if out.finished:
                    del self._tracked[out.request_id]
            with self._lock:
                stream = self._streams.get(out.request_id)
            if stream is not None:
                stream._put_threadsafe(out)

    def _observe(self, tracked: _Tracked, out: RequestOutput, step_start: float, now: float) -> None:
        # Queue time: until the engine first scheduled the request when it says so, else until
        # the start of the step that produced the first token (exact without chunked prefill).
        tracked.num_prompt_tokens = len(out.prompt_token_ids)
        obs = self.observer
        for comp in out.outputs:
            prev = tracked.num_tokens.get(comp.index, 0)
            new = len(comp.token_ids) - prev
            if new <= 0:
                continue
            if tracked.first_token_time is None:
                tracked.first_token_time = now
                if obs is not None:
                    first_sched = (out.metrics or {}).get("first_scheduled_time")
                    queue_s = (first_sched if first_sched else step_start) - tracked.arrival
                    obs.record_first_token(now - tracked.arrival, max(queue_s, 0.0))
            if prev > 0 and obs is not None:
                # Several tokens in one step (speculative decoding) share the interval evenly.
                gap = (now - tracked.last_token_time[comp.index]) / new
                for _ in range(new):
                    obs.record_inter_token(gap)
            elif prev == 0 and new > 1 and obs is not None:
                for _ in range(new - 1):
                    obs.record_inter_token(0.0)
            tracked.num_tokens[comp.index] = len(comp.token_ids)
            tracked.last_token_time[comp.index] = now
        if out.finished and obs is not None:
            obs.record_finished(now - tracked.arrival, tracked.num_prompt_tokens,
                                sum(len(c.token_ids) for c in out.outputs),
                                [c.finish_reason or "stop" for c in out.outputs])
