"""CPU kernel tests: the Triton kernels run under the interpreter (TRITON_INTERPRET=1).

Triton decides between compiling and interpreting when a kernel is defined, so the variable is
set here, at import, and kernels defined before that (by an earlier import from another test
folder) are rebuilt as interpreted ones. Setting TRITON_INTERPRET=1 in tests/conftest.py on
CPU-only machines would make that repair unnecessary (that file does not set the variable now).
On a machine with CUDA the interpreter is left off (tests/gpu covers the kernels there) and these
tests skip.
"""

import importlib
import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
# Helpers first: the kernel modules reloaded after them pick up their interpreted versions.
# In dependency order: a module is reloaded after those it imports from (quant_act before the
# norm and activation kernels, whose QuantizedRows must be the class quant_matmul checks for).
_KERNEL_MODULES = ("kiln.kernels.pdl", "kiln.kernels.quant_act", "kiln.kernels.prefill_fresh",
                   "kiln.kernels.int4_bits", "kiln.kernels.qmm_common",
                   "kiln.kernels.attention_ref", "kiln.kernels.attention_tiles",
                   "kiln.kernels.rotary", "kiln.kernels.decode_attention",
                   "kiln.kernels.attention", "kiln.kernels.rmsnorm", "kiln.kernels.activation",
                   "kiln.kernels.quant_ref", "kiln.kernels.fma_gemv", "kiln.kernels.quant_gemm",
                   "kiln.kernels.mma_gemv", "kiln.kernels.quant_matmul", "kiln.kernels.argmax",
                   "kiln.kernels.step_inputs")


def _interpret_triton_language() -> None:
    """Turn triton.language's own @jit helpers (tl.zeros, tl.max, ...) into interpreted ones.

    Needed only when triton was imported (by another test folder) before TRITON_INTERPRET was
    set: those helpers were then built for compilation and refuse to run under the interpreter.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for name, module in list(sys.modules.items()):
        if name == "triton.language" or name.startswith("triton.language."):
            for attr, obj in list(vars(module).items()):
                if isinstance(obj, JITFunction):
                    setattr(module, attr, InterpretedFunction(obj.fn))


if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    _triton_preloaded = "triton" in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"
    if _triton_preloaded:
        _interpret_triton_language()
    # Kernel modules imported earlier by other tests hold compiled (non-runnable here) kernels.
    for _name in _KERNEL_MODULES:
        if _name in sys.modules:
            importlib.reload(sys.modules[_name])


@pytest.fixture(scope="session", autouse=True)
def interpreter_numpy_fix():
    """Let the Triton 3.6 interpreter run with numpy >= 2.4 (triton-lang/triton#9171).

    The interpreter turns scalar tensors into Python ints with int() on a 1-element array, which
    numpy 2.4 refuses; that breaks any `range()` with a run-time bound. Wrap its patch step so
    scalars convert through .item() instead. Removed at the end of the session.
    """
    if CUDA:
        yield
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpreter, "_patch_lang_tensor", patch_lang_tensor)
        yield


@pytest.fixture(autouse=True)
def triton_on_cpu(monkeypatch):
    """Route the dispatchers to the Triton kernels (interpreted) for each test."""
    if CUDA:
        pytest.skip("interpreter tests run on CPU-only machines; tests/gpu covers CUDA")
    monkeypatch.setenv("KILN_KERNELS", "triton")


@pytest.fixture
def gen():
    """A generator with a fresh random seed (printed, so a failure can be replayed)."""
    # KILN_TEST_SEED=<seed> replays a failure.
    seed = int(os.environ.get("KILN_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
