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


def test_every_command_takes_the_same_engine_flags():
    """generate, serve and the benches share one definition of the engine flags: the same argv
    gives each the same LLMEngine keywords (serve adds its tokenizer and admission limit)."""
    from kiln.cli import build_parser, engine_kwargs
    from kiln.server.launch import engine_kwargs as serve_engine_kwargs

    flags = ["--dtype", "float32", "--max-num-seqs", "7", "--no-enable-prefix-caching",
             "--scheduling-policy", "no-evict", "--kv-cache-dtype", "fp8", "--prefill-graph-sizes",
             "0", "--no-async-scheduling", "--device", "cpu", "--seed", "3"]
    parser = build_parser()
    got = {
        "generate": engine_kwargs(parser.parse_args(["generate", "hi", *flags])),
        "latency": engine_kwargs(parser.parse_args(["bench", "latency", *flags])),
        "throughput": engine_kwargs(parser.parse_args(["bench", "throughput", *flags])),
    }
    serve = serve_engine_kwargs(parser.parse_args(["serve", "--max-waiting-requests", "5", *flags]))
    assert serve.pop("tokenizer") is None and serve.pop("max_waiting_requests") == 5
    got["serve"] = serve
    want = got["generate"]
    assert want["enable_prefix_caching"] is False and want["scheduling_policy"] == "no-evict"
    assert want["max_num_seqs"] == 7 and want["prefill_graph_sizes"] == [0]
    assert want["async_scheduling"] is False and want["seed"] == 3
    for name, kwargs in got.items():
        assert kwargs == want, name
    # the defaults: prefix caching on, first come first served, for serve as for generate
    for argv in (["generate", "hi"], ["serve"]):
        args = parser.parse_args(argv)
        assert args.enable_prefix_caching is True and args.scheduling_policy == "fcfs"
