"""An engine built on the GPU carries the Triton kernels its start-up needs (kiln.build.kernel_cache).

A fresh process with an empty Triton cache stands for a machine that never ran the engine: with
the pack and KILN_ENGINE_KERNELS=all it installs every entry and compiles none of its own during
the start-up; by default it installs the GPU kernels and compiles only the host-side launchers,
from their recorded signatures, in the background;
with KILN_ENGINE_KERNELS=0 it compiles everything. All three generate the same tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

_START = r"""
import json, os, pathlib, sys, time
t0 = time.perf_counter()
from kiln import LLM, SamplingParams
llm = LLM(sys.argv[1], device="cuda", num_kv_blocks=256, max_num_seqs=8)
startup = time.perf_counter() - t0
cache = pathlib.Path(os.environ["TRITON_CACHE_DIR"])
after_startup = sorted(p.name for p in cache.iterdir() if p.is_dir() and any(
    f.is_file() and not f.name.startswith(".") for f in p.iterdir()))
kernels = sorted(p.parent.name for p in cache.glob("*/__grp__*.json"))
sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
out = llm.generate([{"prompt_token_ids": list(range(3, 40))}], sp)
from kiln.build.launchers import wait_launcher_build
wait_launcher_build(timeout=120)
print(json.dumps({"after_startup": after_startup, "kernels": kernels, "startup_s": startup,
                  "install": llm.engine.engine_info.get("kernel_cache_install"),
                  "tokens": list(out[0].outputs[0].token_ids)}))
"""


def _start_fresh(engine: str, cache: Path, **env) -> dict:
    cache.mkdir()
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", _START, engine], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TRITON_CACHE_DIR": str(cache),
                                            "PYTHONPATH": root, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def test_packed_kernels_spare_a_fresh_machine_its_compiles(tmp_path):
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.kernel_cache import PACK_FILE
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=3, dtype="bfloat16")
    scheme = "fp8" if torch.cuda.get_device_capability() >= (8, 9) else "int8-wo"
    info = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"), QuantConfig(scheme),
                                     eval_tokens=0, device="cuda", progress=False,
                                     step_tuning_batch_sizes=()))
    record = info["kernel_cache"]
    assert record["status"] == "packed", record
    assert record["triton"] and record["compute_capability"] == list(torch.cuda.get_device_capability())
    assert record["entries"] >= 10 and record["keys_looked_up"] >= record["entries"]
    with tarfile.open(tmp_path / "e" / PACK_FILE) as tar:
        names = tar.getnames()
    packed = {n.split("/")[0] for n in names if "/" in n}
    packed_kernels = {n.split("/")[0] for n in names if "/__grp__" in n}  # the rest: launchers
    assert len(packed) == record["entries"] and len(packed_kernels) >= 10
    assert "launchers.json" in names and record["launchers"] >= 5

    # KILN_ENGINE_KERNELS=all: kernels and their launchers; the start-up compiles nothing
    everything = _start_fresh(info["path"], tmp_path / "cache-a", KILN_ENGINE_KERNELS="all")
    assert everything["install"]["installed"] == record["entries"]
    compiled_here = set(everything["after_startup"]) - packed
    assert not compiled_here, f"the start-up compiled {len(compiled_here)} entries the pack lacks"

    # the default: the GPU kernels only; this machine compiles the host-side launchers from their
    # recorded signatures, in the background, into the very entries the pack holds (same source)
    default = _start_fresh(info["path"], tmp_path / "cache-b")
    assert default["install"]["installed"] == len(packed_kernels)
    assert default["install"]["host_code_skipped"] == record["entries"] - len(packed_kernels)
    built = default["install"]["launchers"]
    assert built["mismatch"] == built["failed"] == 0, built
    assert built["built"] + built["present"] == record["launchers"]
    assert not set(default["kernels"]) - packed_kernels
    assert not set(default["after_startup"]) - packed  # no launcher the pack does not name

    without = _start_fresh(info["path"], tmp_path / "cache-c", KILN_ENGINE_KERNELS="0")
    assert without["install"]["reason"] == "KILN_ENGINE_KERNELS=0"
    # the same start-up compiles its kernels itself: the entries the pack would have given
    assert len(set(without["kernels"]) & packed_kernels) >= 10
    assert everything["tokens"] == default["tokens"] == without["tokens"]
