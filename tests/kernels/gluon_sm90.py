"""Compiling Gluon (and Triton) kernels for sm_90 on a machine without a GPU, for the kernels'
CPU tests.

The compile runs in a fresh interpreter: this folder's conftest turns Triton's own helpers into
interpreted ones, which the compiler cannot take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource

out = []
for module, name, constexprs, types, aligned, warps in json.loads(sys.argv[1]):
    fn = getattr(importlib.import_module(module), name)
    # "tl.<dtype>" names a Triton dtype (JSON carries no dtypes)
    constexprs = {k: getattr(triton.language, v[3:]) if isinstance(v, str) and v.startswith("tl.") else v
                  for k, v in constexprs.items()}
    for param in fn.params:  # constexprs left out take their defaults
        if param.is_constexpr and param.name not in constexprs and param.has_default:
            constexprs[param.name] = param.default
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        signature[arg] = types.get(arg, "*bf16" if arg.endswith("_ptr") else "i32")
        if arg in aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = GluonASTSource if fn.is_gluon() else ASTSource
    src = source(fn, signature, {(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "num_stages": 1})
    out.append({"shared": kernel.metadata.shared, "ptx": kernel.asm["ptx"]})
print(json.dumps(out))
"""


def compile_sm90(cases: list[tuple], num_warps: int = 1) -> list[dict]:
    """Compile each (Gluon or Triton kernel, constexprs, argument types, 16-divisible arguments)
    for sm_90 with num_warps warps; argument types default to *bf16 for pointers (names ending in
    _ptr) and i32 (give "fp32" for float scalars); a constexpr "tl.<dtype>" is that Triton dtype,
    one left out its default. Returns each kernel's {"shared": bytes, "ptx": text}."""
    spec = [(fn.fn.__module__, fn.fn.__name__, constexprs, types, sorted(aligned), num_warps)
            for fn, constexprs, types, aligned in cases]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
