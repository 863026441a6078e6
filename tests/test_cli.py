"""The `kiln` command: help, version, one-line errors."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_help_lists_every_subcommand():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("generate", "serve", "random-model", "bench"):
        assert cmd in r.stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("kiln ")


def test_missing_model_dir_is_one_line_error(tmp_path):
    r = run("generate", "hi", "--model", str(tmp_path / "nope"), "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("kiln: error:")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_generate_streams_from_random_model(tmp_path):
    r = run("random-model", "--preset", "tiny-llama", "--out", str(tmp_path / "m"), "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    r = run("generate", "def f(x):", "--model", str(tmp_path / "m"), "--max-tokens", "8",
            "--temperature", "0", "--ignore-eos", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def f(x):")
