"""Schemathesis against the live server's /openapi.json: no 5xx, and every response (status, content
type, body) conforms to the schema. Bounded: few examples per operation, few tokens per call."""

from __future__ import annotations

import schemathesis
# from_url imports this lazily; pytest rewrites a plugin's modules (an AST pass) on import, and
# Python 3.11 can raise "SystemError: AST constructor recursion depth mismatch" when that runs
# while another thread builds an AST (seen in CI after a failed server test left threads behind).
# Importing it here does it before any server thread exists.
import schemathesis.specs.openapi.schemas  # noqa: F401
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from server_helpers import thread_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
MAX_TOKENS = 3


def _bound_tokens(body: object) -> None:
    """Keep generation short: cap valid token limits (invalid ones still test rejection)."""
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS


def test_openapi_schema_fuzz(make_engine):
    with thread_server(make_engine(max_model_len=48, max_num_seqs=16)) as srv:
        schema = schemathesis.openapi.from_url(f"{srv.base_url}/openapi.json")
        ops = [result.ok() for result in schema.get_all_operations()]
        paths = {op.path for op in ops}
        assert {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize",
                "/v1/models", "/health", "/metrics", "/version"} <= paths
        for op in ops:
            generating = op.path in ("/v1/completions", "/v1/chat/completions")

            @settings(max_examples=12 if generating else 8, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def run(case):
                _bound_tokens(case.body)
                case.call_and_validate(base_url=srv.base_url, checks=CHECKS, timeout=60)

            run()
        assert srv.engine.is_healthy()
