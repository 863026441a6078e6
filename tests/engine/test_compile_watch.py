"""The count of Triton kernel variants compiled after start-up (engine.stats())."""

from types import SimpleNamespace

from kiln.engine.compile_watch import CompileWatch


def test_compile_watch_counts_cache_misses_and_lets_them_compile(caplog):
    from triton import knobs

    previous = knobs.runtime.jit_cache_hook
    watch = CompileWatch()
    try:
        assert watch.install() and knobs.runtime.jit_cache_hook == watch._on_miss
        # Called the way Triton calls it on an in-memory cache miss; a true result would skip
        # the compilation.
        fn = SimpleNamespace(module="kiln.kernels.attention", name="_prefill_kernel")
        with caplog.at_level("INFO", logger="kiln.engine"):
            for _ in range(2):
                assert not knobs.runtime.jit_cache_hook(
                    key=("k",), repr="_prefill_kernel[num_warps=4](q_ptr: *bf16)", fn=fn,
                    compile={}, is_manual_warmup=False, already_compiled=False)
        assert watch.count == 2 and watch.by_kernel == {"_prefill_kernel": 2}
        assert "compiled after start-up" in caplog.text and "q_ptr: *bf16" in caplog.text
    finally:
        knobs.runtime.jit_cache_hook = previous


def test_engine_stats_report_compiles_after_startup(tiny_model_dir):
    from kiln import LLM

    llm = LLM(tiny_model_dir, dtype="float32", device="cpu")
    assert llm.engine.stats()["kernel_compiles_after_startup"] == 0


def test_a_new_engine_starts_unwatched(tiny_model_dir):
    # An earlier engine's watch stops when the next engine starts: that engine's start-up
    # compiles are neither counted against it nor serialized for its hook.
    from triton import knobs

    from kiln import LLM

    previous = knobs.runtime.jit_cache_hook
    earlier = CompileWatch()
    try:
        assert earlier.install()
        LLM(tiny_model_dir, dtype="float32", device="cpu")
        assert knobs.runtime.jit_cache_hook is None  # a CPU engine installs none of its own
    finally:
        knobs.runtime.jit_cache_hook = previous
