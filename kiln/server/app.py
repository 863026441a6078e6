"""The FastAPI application: routes, the serving-state gate (503 while starting or draining), and the
OpenAPI schema (400 instead of FastAPI's 422, streaming content types documented)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.engine.async_engine import AsyncEngine
from kiln.errors import InvalidRequestError
from kiln.server.launch import add_serve_args, run_serve  # noqa: F401 - the CLI imports them here
from kiln.server.errors import ServiceUnavailableError, install_error_handlers, status_and_body
from kiln.server.metrics import ServerMetrics
from kiln.server.protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                                  CompletionResponse, DetokenizeRequest, DetokenizeResponse,
                                  ErrorResponse, HealthResponse, ModelCard, ModelList,
                                  TokenizeRequest, TokenizeResponse, VersionResponse, error_body)
from kiln.server.serving_chat import chat_prompt_ids, create_chat_completion
from kiln.server.serving_common import check_model
from kiln.server.serving_completions import create_completion

STARTING, READY, DRAINING, STOPPED = "starting", "ready", "draining", "stopped"

# Paths that answer whatever the serving state (they never touch the engine's queue).
_ALWAYS_OPEN = {"/metrics", "/version", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                "/redoc", "/health"}
# Paths whose calls count as in-flight work that a graceful shutdown waits for.
_GENERATION_PATHS = {"/v1/completions", "/v1/chat/completions"}


class ServerState:
    """What the app serves and in which phase it is; shared by routes, the gate and the launcher."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key or None  # when set, /v1 calls need "Authorization: Bearer <key>"
        self.engine: AsyncEngine | None = None
        self.metrics: ServerMetrics | None = None
        self.phase = STARTING
        self.num_in_flight = 0

    def attach(self, engine: AsyncEngine, metrics: ServerMetrics) -> None:
        """The engine is loaded and started: begin serving."""
        self.engine, self.metrics = engine, metrics
        self.phase = READY

    def ready_engine(self) -> AsyncEngine:
        """The engine, or ServiceUnavailableError when not serving."""
        if self.phase != READY or self.engine is None:
            raise ServiceUnavailableError(f"the server is {self.phase}; retry later")
        return self.engine


class _ServingGate:
    """ASGI middleware: 503 for API calls unless READY; counts in-flight generation calls."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.state.api_key and path.startswith("/v1") and not _authorized(scope, self.state.api_key):
            body = error_body("Incorrect or missing API key: send 'Authorization: Bearer <key>' "
                              "with the key given to --api-key", "invalid_request_error", None,
                              "invalid_api_key")
            await JSONResponse(body, status_code=401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if path not in _ALWAYS_OPEN and self.state.phase != READY:
            status, body = status_and_body(ServiceUnavailableError(
                f"the server is {self.state.phase}; retry later"))
            await JSONResponse(body, status_code=status)(scope, receive, send)
            return
        counted = path in _GENERATION_PATHS
        if counted:
            self.state.num_in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.state.num_in_flight -= 1


def _authorized(scope: Scope, api_key: str) -> bool:
    """Whether the request carries "Authorization: Bearer <api_key>" (compared in constant time)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                      api_key.encode())
    return False


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 500, 503)}


# One server-sent event (OpenAPI before 3.2 describes each event of a stream with `schema`): its
# `data` is a JSON chunk, an {"error": ...} object, or the final "[DONE]".
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                             "id": {"type": "string"}, "retry": {"type": "integer"}}}


def _stream_responses(model: type) -> dict:
    return {200: {"model": model, "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
            **_ERRORS}


def build_app(state: ServerState) -> FastAPI:
    """The OpenAI-compatible app over ``state`` (whose engine may be attached later)."""
    from kiln import __version__

    app = FastAPI(title="kiln", version=__version__,
                  description="An OpenAI-compatible LLM server (completions, chat, tokenize).")
    app.state.kiln = state
    install_error_handlers(app)
    app.add_middleware(_ServingGate, state=state)

    @app.post("/v1/completions", response_model=None, responses=_stream_responses(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Complete one or more prompts."""
        return _json(await create_completion(state.ready_engine(), body, request))

    @app.post("/v1/chat/completions", response_model=None,
              responses=_stream_responses(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """Reply to a conversation."""
        return _json(await create_chat_completion(state.ready_engine(), body, request))

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models() -> ModelList:
        """The served model."""
        engine = state.ready_engine()
        return ModelList(data=[ModelCard(id=engine.model_name, root=engine.model_name,
                                         max_model_len=engine.max_model_len)])

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        """Token ids of a prompt, or of chat messages rendered through the chat template."""
        engine = state.ready_engine()
        check_model(body.model, engine.model_name)
        if (body.prompt is None) == (body.messages is None):
            raise InvalidRequestError("give exactly one of prompt or messages", param="prompt")
        if body.messages is not None:
            ids = chat_prompt_ids(engine.tokenizer, body.messages, body.add_generation_prompt) \
                if body.messages else []
        else:
            ids = engine.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return TokenizeResponse(count=len(ids), max_model_len=engine.max_model_len, tokens=ids)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        """Text of token ids."""
        engine = state.ready_engine()
        check_model(body.model, engine.model_name)
        vocab = len(engine.tokenizer)
        if any(not 0 <= t < vocab for t in body.tokens):
            raise InvalidRequestError(f"token ids must be in [0, {vocab})", param="tokens")
        return DetokenizeResponse(prompt=engine.tokenizer.decode(body.tokens))

    @app.get("/version", response_model=VersionResponse)
    async def version() -> VersionResponse:
        """The kiln version."""
        return VersionResponse(version=__version__)

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
    async def health() -> Any:
        """200 while serving and the engine loop makes progress; 503 otherwise."""
        engine = state.engine
        if state.phase != READY or engine is None:
            return _json(ServiceUnavailableError(f"the server is {state.phase}"))
        if not engine.is_healthy():
            why = (f"the engine loop died: {engine.dead_error!r}" if engine.dead_error is not None
                   else "the engine loop is not making progress")
            return _json(ServiceUnavailableError(why))
        return HealthResponse()

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        """Prometheus metrics."""
        body = state.metrics.render() if state.metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    _install_schema(app)
    return app


def _json(result: Any) -> Any:
    """Pydantic models become JSON responses; exceptions become error responses."""
    if isinstance(result, BaseException):
        status, body = status_and_body(result)
        return JSONResponse(body, status_code=status)
    if hasattr(result, "model_dump"):
        return Response(result.model_dump_json(), media_type="application/json")
    return result


def _install_schema(app: FastAPI) -> None:
    """Document 400 (our validation status) where FastAPI would document 422."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
