"""The training corpus rules: tests excluded, split by a stable hash of the path, ~5% held out."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from kiln.demo import corpus as demo_corpus  # noqa: E402
import demo_tokenizer  # noqa: E402


def test_split_is_a_function_of_the_path():
    assert demo_corpus.split_of("json/decoder.py") == demo_corpus.split_of("json/decoder.py")
    names = [f"pkg{i}/mod{i}.py" for i in range(4000)]
    splits = [demo_corpus.split_of(n) for n in names]
    assert 0.035 < splits.count("test") / len(names) < 0.065
    assert 0.01 < splits.count("val") / len(names) < 0.03


def test_test_directories_are_excluded():
    assert demo_corpus.is_excluded(("test", "test_os.py"))
    assert demo_corpus.is_excluded(("idlelib", "idle_test", "test_x.py"))
    assert demo_corpus.is_excluded(("lib2to3", "tests", "data", "x.py"))
    assert demo_corpus.is_excluded(("site-packages", "pip", "__init__.py"))
    assert not demo_corpus.is_excluded(("unittest", "case.py"))
    assert not demo_corpus.is_excluded(("doctest.py",))


def test_collected_stdlib_has_no_test_files():
    files = demo_corpus.collect_stdlib_files()
    assert len(files) > 300
    paths = {f.rel_path for f in files}
    assert "os.py" in paths
    assert not any("/test/" in "/" + p or "/tests/" in "/" + p for p in paths)
    assert {f.split for f in files} == {"train", "val", "test"}


def test_train_bpe_special_ids_and_round_trip():
    texts = ["def f(x):\n    return x + 1\n"] * 50 + ["import os\nprint(os.sep)\n"] * 50
    tok = demo_tokenizer.train_bpe(texts, vocab_size=300)
    assert [tok.token_to_id(t) for t in demo_tokenizer.SPECIAL_TOKENS] == [0, 1, 2]
    sample = "é🙂\tdef  g():\r\n"
    assert tok.decode(tok.encode(sample).ids) == sample
