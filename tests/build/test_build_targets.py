"""GPU target names and the refusal of engines built for another device."""

import pytest

from kiln.build import engine_dir
from kiln.build.engine_dir import check_engine_target
from kiln.build.gpu_target import (CPU_TARGET, GpuTarget, canonical_gpu_key, resolve_target,
                                   target_from_name)
from kiln.errors import KilnError


@pytest.mark.parametrize("device_name, key", [
    ("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100"),
    ("NVIDIA GH200 480GB", "gh200"), ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA A10G", "a10g"),
    ("NVIDIA A10", "a10"), ("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("Tesla T4", "teslat4"),
])
def test_canonical_keys(device_name, key):
    assert canonical_gpu_key(device_name) == key


def test_target_from_name():
    t = target_from_name("H200")
    assert t == GpuTarget("h200", "NVIDIA H200", (9, 0)) and t.sm == "sm_90"
    assert target_from_name("l40s").compute_capability == (8, 9)
    assert target_from_name("cpu") is CPU_TARGET and CPU_TARGET.describe() == "no GPU (cpu)"
    assert GpuTarget.from_dict(t.to_dict()) == t
    with pytest.raises(KilnError, match="unknown target GPU"):
        target_from_name("voodoo2")
    assert resolve_target("auto") == CPU_TARGET  # this machine has no GPU


def _info(target, scheme="fp8"):
    return {"path": "/x/engine", "target": target.to_dict(), "quantization": {"scheme": scheme},
            "source": {"path": "/m/llama"}}


def test_gpu_engine_refused_on_cpu():
    with pytest.raises(KilnError) as e:
        check_engine_target(_info(target_from_name("h200")), "cpu")
    msg = str(e.value)
    assert msg == ("engine /x/engine was built for NVIDIA H200 (sm_90) but this machine has no GPU "
                   "(cpu); fp8 needs an FP8 GPU (sm_89+); for this machine rebuild with "
                   "`kiln build /m/llama --quant int8-wo --target-gpu cpu`")
    with pytest.raises(KilnError, match="built for NVIDIA A100 \\(sm_80\\).*--quant int4-wo "
                                        "--target-gpu cpu`$"):
        check_engine_target(_info(target_from_name("a100"), "int4-wo"), "cpu")


def test_gpu_engine_refused_on_another_gpu(monkeypatch):
    a100 = GpuTarget("a100", "NVIDIA A100", (8, 0))
    monkeypatch.setattr(engine_dir, "device_target", lambda device: a100)
    with pytest.raises(KilnError) as e:
        check_engine_target(_info(target_from_name("h200")), "cuda")
    msg = str(e.value)
    assert "\n" not in msg
    assert "built for NVIDIA H200 (sm_90) but this machine has NVIDIA A100 (sm_80)" in msg
    assert msg.endswith("--target-gpu a100`")
    check_engine_target(_info(target_from_name("a100")), "cuda")  # same GPU: fine


def test_cpu_engine_runs_anywhere(monkeypatch):
    check_engine_target(_info(CPU_TARGET, "int4-wo"), "cpu")
    monkeypatch.setattr(engine_dir, "device_target",
                        lambda device: GpuTarget("h200", "NVIDIA H200", (9, 0)))
    check_engine_target(_info(CPU_TARGET, "int4-wo"), "cuda")
