"""The OpenAI API of a live server, driven by the official `openai` client (and raw httpx for the
error cases the client would refuse to send)."""

from __future__ import annotations

import httpx
import openai
import pytest

PROMPT = "def main():"


def test_completion_basic(server):
    c = server.client()
    r = c.completions.create(model=server.model_name, prompt=PROMPT, max_tokens=5, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.model == server.model_name
    assert len(r.choices) == 1 and r.choices[0].finish_reason == "length"
    assert isinstance(r.choices[0].text, str) and r.choices[0].text
    assert r.usage.completion_tokens == 5
    prompt_ids = httpx.post(f"{server.base_url}/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_completion_token_id_prompts_batch(server):
    c = server.client()
    r = c.completions.create(model=server.model_name, prompt=[[11, 12, 13], [14, 15]], max_tokens=3,
                             temperature=0, n=2, extra_body={"ignore_eos": True})
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 12
    by_index = {ch.index: ch.text for ch in r.choices}
    assert by_index[0] == by_index[1] and by_index[2] == by_index[3]  # greedy: n copies agree


def test_chat_basic(server):
    c = server.client()
    r = c.chat.completions.create(model=server.model_name, max_tokens=4, temperature=0,
                                  messages=[{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "hello"}],
                                  extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4


def test_max_completion_tokens_wins(server):
    c = server.client()
    r = c.chat.completions.create(model=server.model_name, max_completion_tokens=2, max_tokens=6,
                                  temperature=0, messages=[{"role": "user", "content": "x"}],
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 2


def _streamed_text(chunks):
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for ch in chunks:
        for choice in ch.choices:
            piece = getattr(choice, "text", None)
            if piece is None:
                piece = choice.delta.content or ""
            texts[choice.index] = texts.get(choice.index, "") + piece
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return texts, finish


def test_completion_stream_equals_non_stream(server):
    c = server.client()
    kw = dict(model=server.model_name, prompt=PROMPT, max_tokens=8, temperature=0,
              extra_body={"ignore_eos": True})
    full = c.completions.create(**kw)
    chunks = list(c.completions.create(stream=True, **kw))
    texts, finish = _streamed_text(chunks)
    assert texts[0] == full.choices[0].text
    assert finish == {0: "length"}
    assert all(ch.usage is None for ch in chunks)  # no include_usage: no usage anywhere


def test_chat_stream_equals_non_stream_with_usage(server):
    c = server.client()
    kw = dict(model=server.model_name, messages=[{"role": "user", "content": "tell me"}],
              max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    full = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    texts, finish = _streamed_text(chunks)
    assert texts[0] == full.choices[0].message.content and finish == {0: "length"}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == full.usage.model_dump()
    assert all(ch.usage is None for ch in chunks[:-1])


def test_stream_n2(server):
    c = server.client()
    chunks = list(c.completions.create(model=server.model_name, prompt=PROMPT, max_tokens=4, n=2,
                                       temperature=1.0, seed=3, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True}))
    texts, finish = _streamed_text(chunks)
    assert set(texts) == {0, 1} and finish == {0: "length", 1: "length"}
    assert chunks[-1].usage.completion_tokens == 8


def test_seed_reproducible(server):
    c = server.client()
    kw = dict(model=server.model_name, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=1234,
              extra_body={"ignore_eos": True})
    a = c.completions.create(**kw).choices[0].text
    b = c.completions.create(**kw).choices[0].text
    assert a == b


def test_completion_logprobs(server):
    c = server.client()
    r = c.completions.create(model=server.model_name, prompt=PROMPT, max_tokens=4, temperature=0,
                             logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for sampled, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert sampled <= 0.0 and 1 <= len(top) <= 3
        assert sampled >= max(top.values()) - 1e-5  # greedy takes the most likely token


def test_chat_logprobs(server):
    c = server.client()
    r = c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": "a"}],
                                  max_tokens=3, temperature=0, logprobs=True, top_logprobs=2,
                                  extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 3
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)
        assert entry.bytes == list(entry.token.encode("utf-8"))


def test_stop_string(server):
    c = server.client()
    kw = dict(model=server.model_name, prompt=PROMPT, max_tokens=12, temperature=0)
    full = c.completions.create(extra_body={"ignore_eos": True}, **kw).choices[0].text
    # A stop string taken from the middle of the greedy text: the output must end just before
    # its first occurrence.
    spots = [i for i in range(1, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].isalnum()]
    assert spots, f"no ASCII pair in {full!r}"
    stop = full[spots[len(spots) // 2]:spots[len(spots) // 2] + 2]
    r = c.completions.create(stop=[stop], extra_body={"ignore_eos": True}, **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[:full.find(stop)]


def test_models_version_tokenize_roundtrip(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.model_name]
    assert httpx.get(f"{server.base_url}/version").json()["version"]
    tok = httpx.post(f"{server.base_url}/tokenize",
                     json={"prompt": "hello world", "add_special_tokens": False}).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == 128
    text = httpx.post(f"{server.base_url}/detokenize", json={"tokens": tok["tokens"]}).json()
    assert text["prompt"] == "hello world"
    chat = httpx.post(f"{server.base_url}/tokenize",
                      json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 1


def _post(server, path, body):
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=30)


BAD_COMPLETIONS = [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", None),
    ({"prompt": "x", "temperature": -0.5}, "temperature", None),
    ({"prompt": "x", "top_p": 0}, "top_p", None),
    ({"prompt": "x", "top_p": 1.5}, "top_p", None),
    ({"prompt": "x", "n": 0}, "n", None),
    ({"prompt": "x", "logprobs": 21}, "logprobs", None),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty", None),
    ({"prompt": "x", "max_tokens": 2, "min_tokens": 5}, "min_tokens", None),
    ({"prompt": "x", "stop": [""]}, "stop", None),
    ({"prompt": []}, "prompt", None),
    ({"prompt": [10**9]}, "prompt", None),
    ({"prompt": 5}, "prompt", None),
    ({"max_tokens": 3}, "prompt", None),
    ({"prompt": "x", "max_tokens": 100000}, "max_tokens", "context_length_exceeded"),
    ({"prompt": list(range(1, 200))}, "prompt", "context_length_exceeded"),
]


@pytest.mark.parametrize("body,param,code", BAD_COMPLETIONS)
def test_completions_400(server, body, param, code):
    r = _post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    if code is not None:
        assert err["code"] == code


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
     "max_completion_tokens"),
]


@pytest.mark.parametrize("body,param", BAD_CHATS)
def test_chat_400(server, body, param):
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_malformed_json_is_400(server):
    r = httpx.post(f"{server.base_url}/v1/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found"


def test_openai_client_sees_bad_request(server):
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model=server.model_name, prompt="x", max_tokens=1,
                                           temperature=-1)


def test_bad_requests_leave_server_healthy(server):
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    r = server.client().completions.create(model=server.model_name, prompt="x", max_tokens=1)
    assert len(r.choices) == 1
