"""`kiln serve --api-key`: /v1 routes need "Authorization: Bearer KEY"; health, metrics and the
schema stay open; a wrong or missing key is a 401 in OpenAI's error shape."""

from __future__ import annotations

import argparse

import httpx
import openai
import pytest
from server_helpers import thread_server

KEY = "sk-kiln-test"


@pytest.fixture(scope="module")
def keyed(make_engine):
    with thread_server(make_engine(max_model_len=128), api_key=KEY) as srv:
        yield srv


def test_right_key_serves(keyed):
    c = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=KEY, max_retries=0)
    r = c.completions.create(model=keyed.model_name, prompt="def f():", max_tokens=3, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    assert [m.id for m in c.models.list().data] == [keyed.model_name]


def test_wrong_or_missing_key_is_401(keyed):
    c = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        c.chat.completions.create(model=keyed.model_name, max_tokens=2,
                                  messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 401
    for headers in ({}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(f"{keyed.base_url}/v1/completions", headers=headers,
                       json={"model": keyed.model_name, "prompt": "x", "max_tokens": 1})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"


def test_open_paths_need_no_key(keyed):
    for path in ("/health", "/metrics", "/version", "/openapi.json"):
        assert httpx.get(f"{keyed.base_url}{path}").status_code == 200, path
    assert httpx.post(f"{keyed.base_url}/tokenize", json={"prompt": "x"}).status_code == 200


def test_flag_and_environment(monkeypatch):
    from kiln.server.launch import add_serve_args

    monkeypatch.delenv("KILN_API_KEY", raising=False)
    assert add_serve_args(argparse.ArgumentParser()).parse_args([]).api_key is None
    assert add_serve_args(argparse.ArgumentParser()).parse_args(["--api-key", "k"]).api_key == "k"
    monkeypatch.setenv("KILN_API_KEY", "from-env")
    assert add_serve_args(argparse.ArgumentParser()).parse_args([]).api_key == "from-env"
