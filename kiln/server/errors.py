"""Map exceptions to OpenAI-shaped error responses (status code plus {"error": {...}})."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiln.engine.async_engine import EngineDeadError, QueueFullError
from kiln.errors import InvalidRequestError, KilnError
from kiln.server.protocol import error_body

logger = logging.getLogger("kiln.server")


class ModelNotFoundError(KilnError):
    """The request named a model this server does not serve."""


class ServiceUnavailableError(KilnError):
    """The server is starting, draining for shutdown, or its engine has died."""


def status_and_body(exc: BaseException) -> tuple[int, dict]:
    """The HTTP status and OpenAI error body for an exception raised while serving a request."""
    if isinstance(exc, InvalidRequestError):
        return 400, error_body(str(exc), "invalid_request_error", exc.param, exc.code)
    if isinstance(exc, ModelNotFoundError):
        return 404, error_body(str(exc), "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, QueueFullError):
        return 429, error_body(str(exc), "rate_limit_error", None, "queue_full")
    if isinstance(exc, (EngineDeadError, ServiceUnavailableError)):
        return 503, error_body(str(exc), "service_unavailable", None, "service_unavailable")
    if isinstance(exc, KilnError):
        return 400, error_body(str(exc), "invalid_request_error")
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return 500, error_body(f"internal error: {exc!r}", "internal_error", None, "internal_error")


def error_json(exc: BaseException) -> JSONResponse:
    """A JSONResponse for an exception."""
    status, body = status_and_body(exc)
    return JSONResponse(body, status_code=status)


def _validation_param(err: dict) -> str | None:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
    # pydantic appends the union member it tried (e.g. 'str', 'list[int]'): drop those parts.
    kept = [p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int", "float",
                                                                        "bool", "function-after")]
    return ".".join(kept) or None


def install_error_handlers(app: FastAPI) -> None:
    """Make every failure an OpenAI-shaped error; validation failures are 400, not 422."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _validation_param(first)
        msg = first.get("msg", "invalid request")
        message = f"{param}: {msg}" if param else msg
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problems)"
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(KilnError)
    async def _kiln(_: Request, exc: KilnError) -> JSONResponse:
        return error_json(exc)

    @app.exception_handler(EngineDeadError)
    async def _dead(_: Request, exc: EngineDeadError) -> JSONResponse:
        return error_json(exc)

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_json(exc)
