"""Pieces shared by the completions and chat handlers: sampling values, submitting prompts,
merging their output streams, server-sent events, client-disconnect handling, logprob text."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kiln.engine.async_engine import AsyncEngine, RequestStream
from kiln.errors import InvalidRequestError
from kiln.request import CompletionOutput, Logprob, RequestOutput
from kiln.sampling_params import SamplingParams
from kiln.server.errors import ModelNotFoundError, status_and_body
from kiln.server.protocol import SamplingFields

# Status for a request whose client went away before the reply (nginx's convention).
CLIENT_CLOSED_STATUS = 499


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style object id."""
    return f"{prefix}-{uuid.uuid4().hex}"


def check_model(requested: str | None, served: str) -> None:
    """Raise ModelNotFoundError unless the request names the served model (or none)."""
    if requested is not None and requested != served:
        raise ModelNotFoundError(f"the model {requested!r} does not exist; this server serves {served!r}")


def sampling_params(req: SamplingFields, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """Build SamplingParams from the request's fields (OpenAI defaults where it gives none)."""
    kwargs: dict[str, Any] = dict(
        n=req.n, max_tokens=max_tokens, logprobs=logprobs, seed=req.seed, stop=req.stop,
        stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos, min_tokens=req.min_tokens,
        include_stop_str_in_output=req.include_stop_str_in_output,
        skip_special_tokens=req.skip_special_tokens)
    optional = dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                    presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                    repetition_penalty=req.repetition_penalty)
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if max_tokens is not None and req.min_tokens > max_tokens:
        raise InvalidRequestError(f"min_tokens ({req.min_tokens}) must not exceed max_tokens "
                                  f"({max_tokens})", param="min_tokens")
    return SamplingParams(**kwargs)


async def submit_all(engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams,
                     base_id: str) -> list[RequestStream]:
    """Submit one engine request per prompt; on any refusal, abort those already submitted."""
    streams: list[RequestStream] = []
    try:
        for i, ids in enumerate(prompts):
            rid = base_id if len(prompts) == 1 else f"{base_id}-{i}"
            streams.append(await engine.add_request(ids, params, rid))
    except BaseException:
        for s in streams:
            s.close()
        raise
    return streams


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Yield (prompt index, output) from several request streams as outputs arrive."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
            await queue.put(done)
        except Exception as e:  # noqa: BLE001 - handed to the consumer below
            await queue.put(e)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.close()


async def collect_final(streams: list[RequestStream]) -> list[RequestOutput]:
    """Wait for every stream to finish; returns each prompt's last output."""
    finals: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for i, out in merge_streams(streams):
            finals[i] = out
    finally:
        for s in streams:
            s.close()
    assert all(f is not None for f in finals)
    return finals  # type: ignore[return-value]


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Run ``work``; if the client disconnects first, cancel it (which aborts its requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return Response(status_code=CLIENT_CLOSED_STATUS)


def sse_event(payload: BaseModel | dict, exclude: set[str] | None = None) -> str:
    """One server-sent event carrying a JSON payload."""
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude=exclude)
    else:
        data = json.dumps(payload)
    return f"data: {data}\n\n"


def sse_error_event(exc: BaseException) -> str:
    """The event that ends a stream which failed after its headers were sent."""
    _, body = status_and_body(exc)
    return sse_event(body)


SSE_DONE = "data: [DONE]\n\n"


async def sse_body(events: AsyncIterator[str], streams: list[RequestStream]) -> AsyncIterator[str]:
    """A streaming response's body: the events, then ``[DONE]``. An error after the headers went
    out is reported in-band as the last event before ``[DONE]``; the request streams are closed
    however the body ends (finished, failed or abandoned by the client)."""
    try:
        async for event in events:
            yield event
    except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, then end the stream
        yield sse_error_event(e)
    finally:
        for s in streams:
            s.close()
    yield SSE_DONE


class DeltaTracker:
    """What each streamed choice has already sent (text characters, tokens), so that every chunk
    carries only what is new, and a choice whose finish_reason went out sends nothing more."""

    def __init__(self) -> None:
        self.sent_text: dict[int, int] = {}
        self.sent_tokens: dict[int, int] = {}
        self.ended: set[int] = set()

    def new_part(self, index: int, comp: CompletionOutput) -> tuple[str, int] | None:
        """(the text choice ``index`` has not sent yet, how many of its tokens it has sent) for
        its latest output ``comp``, or None when there is nothing to send.
        Marks it all sent."""
        if index in self.ended:
            return None
        text_start, tok_start = self.sent_text.get(index, 0), self.sent_tokens.get(index, 0)
        delta = comp.text[text_start:]
        if not delta and len(comp.token_ids) <= tok_start and comp.finish_reason is None:
            return None
        self.sent_text[index] = max(text_start, len(comp.text))
        self.sent_tokens[index] = len(comp.token_ids)
        if comp.finish_reason is not None:
            self.ended.add(index)
        return delta, tok_start


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always closes its generator when it ends.

    Whether the client disconnects or the stream completes, ``aclose()`` runs at once, so the
    generator's ``finally`` (which aborts engine requests) never waits for garbage collection.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None] | None = None):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break

        try:
            async with anyio.create_task_group() as tg:
                async def stream_then_stop() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the socket went away mid-send
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(stream_then_stop)
                await watch_disconnect()
                tg.cancel_scope.cancel()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
            if self._on_close is not None:
                self._on_close()


def logprob_token_text(tokenizer: Any, token_id: int, lp: Logprob) -> str:
    """The text of one token in a logprobs entry."""
    if lp.decoded_token is not None:
        return lp.decoded_token
    return tokenizer.decode([token_id])


def ranked(entry: dict[int, Logprob]) -> list[tuple[int, Logprob]]:
    """A position's logprob entries, most likely first."""
    return sorted(entry.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30,
                                                -kv[1].logprob))


def check_prompt_ids(ids: list[int], param: str = "prompt") -> None:
    """Refuse empty prompts before they reach the engine."""
    if not ids:
        raise InvalidRequestError("the prompt is empty", param=param)
