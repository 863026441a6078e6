"""`kiln serve --chat-template`: a file or an inline template replaces the tokenizer's for chat."""

from __future__ import annotations

import httpx
import pytest
from server_helpers import thread_server

from kiln.errors import KilnError
from kiln.server.launch import load_chat_template

TEMPLATE = ("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<<assistant>>{% endif %}")


def test_file_inline_and_bad_templates(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text(TEMPLATE)
    assert load_chat_template(str(f)) == TEMPLATE
    assert load_chat_template(TEMPLATE) == TEMPLATE
    with pytest.raises(KilnError, match="neither a file nor a Jinja template"):
        load_chat_template(str(tmp_path / "missing.jinja"))
    with pytest.raises(KilnError, match="does not parse as Jinja"):
        load_chat_template("{% for m in messages %}unclosed")


def test_served_chat_uses_the_given_template(make_engine):
    engine = make_engine(max_model_len=128)
    if not hasattr(engine, "tokenizer") or not hasattr(engine.tokenizer, "apply_chat_template"):
        pytest.skip("needs the real engine's tokenizer")
    engine.tokenizer.chat_template = load_chat_template(TEMPLATE)
    messages = [{"role": "user", "content": "hello there"}]
    want = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert want == "<<user>>hello there\n<<assistant>>"
    want_ids = engine.tokenizer(want, add_special_tokens=False)["input_ids"]
    with thread_server(engine) as srv:
        r = httpx.post(f"{srv.base_url}/v1/chat/completions", timeout=60,
                       json={"model": srv.model_name, "messages": messages, "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(want_ids)
