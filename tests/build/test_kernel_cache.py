"""The engine's packed Triton kernels (kiln.build.kernel_cache) and the launchers recorded with
them (kiln.build.launchers), on the CPU.

Triton's own cache manager writes the entries here exactly as a compilation does (files through
``put``, then the group file naming them), so the round trip is checked against the code that
will read them: ``get_group`` on the installing machine must return every file, at its paths.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from kiln.build import kernel_cache as kc  # noqa: E402
from kiln.build import launchers as kl  # noqa: E402


def _cache_at(monkeypatch, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(path))
    assert Path(triton.knobs.cache.dir) == path
    return path


def _compile_like(hash_hex: str, name: str = "kern") -> tuple[str, dict[str, bytes]]:
    """Write one cache entry the way triton.compiler.compile does; returns (key, file contents)."""
    from triton.runtime.cache import get_cache_manager

    mgr = get_cache_manager(hash_hex)
    files = {f"{name}.cubin": bytes(range(256)) * 3, f"{name}.ptx": b"// ptx text\n",
             f"{name}.json": json.dumps({"name": name, "num_warps": 4}).encode()}
    group = {}
    for fname, data in files.items():
        group[fname] = mgr.put(data, fname, binary=not fname.endswith((".ptx", ".json")))
    mgr.put_group(f"{name}.json", group)
    return mgr.key, files


def _hash(i: int) -> str:
    return f"{i:064x}"


def test_recorded_entries_pack_and_install_where_triton_finds_them(tmp_path, monkeypatch):
    from triton.runtime.cache import get_cache_manager

    a = _cache_at(monkeypatch, tmp_path / "build-machine")
    made = [_compile_like(_hash(i), f"k{i}") for i in range(3)]
    kc.start_recording()
    try:
        for i in (0, 2):  # a start-up that looks up two of the three
            get_cache_manager(_hash(i)).get_group(f"k{i}.json")
    finally:
        keys = kc.stop_recording()
    assert keys == [made[0][0], made[2][0]]
    assert triton.knobs.cache.manager_class is None  # recording really stopped
    pack = tmp_path / kc.PACK_FILE
    summary = kc.pack_entries(a, keys, pack)
    assert summary["entries"] == 2 and summary["files"] == 8
    with tarfile.open(pack) as tar:  # group files name their children relative
        grp = next(m for m in tar if m.name.endswith("__grp__k0.json"))
        assert json.loads(tar.extractfile(grp).read())["child_paths"]["k0.cubin"] == "k0.cubin"

    b = _cache_at(monkeypatch, tmp_path / "other" / "machine")
    counts = kc.install_pack(pack, b)
    assert counts == {"installed": 2, "present": 0, "skipped": 0, "host_code_skipped": 0}
    for i in (0, 2):
        key, files = made[i]
        group = get_cache_manager(_hash(i)).get_group(f"k{i}.json")
        assert set(group) == set(files)
        for fname, path in group.items():
            assert Path(path).parent == b / key
            assert Path(path).read_bytes() == files[fname]
    assert get_cache_manager(_hash(1)).get_group("k1.json") is None  # not looked up: not packed
    # a second install finds everything there and writes nothing
    assert kc.install_pack(pack, b) == {"installed": 0, "present": 2, "skipped": 0, "host_code_skipped": 0}


def test_install_keeps_existing_entries_and_ignores_foreign_members(tmp_path, monkeypatch):
    a = _cache_at(monkeypatch, tmp_path / "a")
    key, _ = _compile_like(_hash(7), "k")
    pack = tmp_path / kc.PACK_FILE
    kc.pack_entries(a, [key, "not-a-key", "../../etc"], pack)
    with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tar:
        for name in ("../escape.txt", f"{key}/../../x", f"{key}/sub/dir", "ABCDEFGHIJKLMNOPQRSTUV/.hidden"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    b = tmp_path / "b"
    counts = kc.install_pack(tmp_path / "bad.tar.gz", b)
    assert counts["installed"] == 0 and counts["skipped"] == 4
    assert not (tmp_path / "escape.txt").exists() and not b.exists()
    # an entry compiled locally already is left as it is
    (b / key).mkdir(parents=True)
    (b / key / "k.cubin").write_bytes(b"local")
    grp = {"child_paths": {"k.cubin": str(b / key / "k.cubin")}}
    (b / key / "__grp__k.json").write_text(json.dumps(grp))
    assert kc.install_pack(pack, b) == {"installed": 0, "present": 1, "skipped": 0, "host_code_skipped": 0}
    assert (b / key / "k.cubin").read_bytes() == b"local"


def test_partial_entry_is_completed_group_last(tmp_path, monkeypatch):
    """A key directory that exists without its group file (a lookup that found nothing, or a
    compilation cut short) gets the packed files and then the group file."""
    a = _cache_at(monkeypatch, tmp_path / "a")
    key, files = _compile_like(_hash(9), "k")
    pack = tmp_path / kc.PACK_FILE
    kc.pack_entries(a, [key], pack)
    b = tmp_path / "b"
    (b / key).mkdir(parents=True)
    assert kc.install_pack(pack, b)["installed"] == 1
    grp = json.loads((b / key / "__grp__k.json").read_text())["child_paths"]
    assert {n: Path(p).read_bytes() for n, p in grp.items()} == files
    assert not [p for p in (b / key).iterdir() if p.name.startswith(".kiln-tmp")]


def _engine_info(tmp_path: Path, pack: bool = True, **record) -> dict:
    if pack:
        a = tmp_path / "a"
        a.mkdir(exist_ok=True)
        (tmp_path / "engine").mkdir(exist_ok=True)
        key = "A" * 52
        (a / key).mkdir(exist_ok=True)
        (a / key / "k.cubin").write_bytes(b"\x01\x02")
        grp = {"child_paths": {"k.cubin": str(a / key / "k.cubin")}}
        (a / key / "__grp__k.json").write_text(json.dumps(grp))
        kc.pack_entries(a, [key], tmp_path / "engine" / kc.PACK_FILE)
    base = {"status": "packed", "triton": triton.__version__, "compute_capability": [9, 0], "entries": 1}
    return {"path": str(tmp_path / "engine"), "kernel_cache": {**base, **record}}


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of compute capability 9.0 as far as install_engine_kernels asks."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")


def test_install_engine_kernels_applies_only_where_they_were_compiled(tmp_path, monkeypatch, fake_cuda):
    cache = _cache_at(monkeypatch, tmp_path / "cache")
    info = _engine_info(tmp_path)
    assert "no packed kernels" in kc.install_engine_kernels({"path": str(tmp_path)}, "cuda")["reason"]
    assert kc.install_engine_kernels(info, "cpu")["reason"] == "device cpu"
    other = _engine_info(tmp_path, pack=False, triton="0.0.1")
    assert "Triton 0.0.1" in kc.install_engine_kernels(other, "cuda")["reason"]
    other = _engine_info(tmp_path, pack=False, compute_capability=[8, 0])
    assert "this GPU is [9, 0]" in kc.install_engine_kernels(other, "cuda")["reason"]
    monkeypatch.setenv("KILN_ENGINE_KERNELS", "0")
    assert kc.install_engine_kernels(info, "cuda")["reason"] == "KILN_ENGINE_KERNELS=0"
    assert not any(cache.iterdir())
    monkeypatch.delenv("KILN_ENGINE_KERNELS")
    done = kc.install_engine_kernels(info, "cuda:0")
    assert done["installed"] == 1 and (cache / ("A" * 52) / "k.cubin").read_bytes() == b"\x01\x02"
    # a damaged pack is reported, not raised: the kernels then compile on first use
    (tmp_path / "engine" / kc.PACK_FILE).write_bytes(b"not a tarball")
    assert kc.install_engine_kernels(info, "cuda")["installed"] == 0


def test_build_stage_reports_a_failed_recording_and_leaves_no_pack(tmp_path, monkeypatch):
    (tmp_path / kc.PACK_FILE).write_bytes(b"half written")

    def failed(cmd, **kw):
        assert cmd[1:3] == ["-m", "kiln.build.kernel_cache"] and cmd[-1] == "cuda:0"
        return subprocess.CompletedProcess(cmd, 1, stdout="",
                                           stderr="Traceback\nRuntimeError: out of memory\n")

    monkeypatch.setattr(kc.subprocess, "run", failed)
    record = kc.build_kernel_pack(tmp_path, torch.device("cuda:0"))
    assert record == {"status": "not-packed",
                      "reason": "the recording start-up failed: RuntimeError: out of memory"}
    assert not (tmp_path / kc.PACK_FILE).exists()


def test_cpu_build_records_why_nothing_was_packed(tmp_path):
    from build_helpers import write_calib_file, write_tiny_checkpoint

    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.engine_dir import load_engine_model
    from kiln.quant.config import QuantConfig

    src = write_tiny_checkpoint(tmp_path / "src")
    calib = str(write_calib_file(tmp_path / "calib.txt"))
    info = build_engine(BuildOptions(str(src), str(tmp_path / "e"), QuantConfig("int8-wo"),
                                     calib_data=calib, eval_data=calib, eval_tokens=64,
                                     target_gpu="cpu", progress=False))
    assert info["kernel_cache"] == {"status": "not-packed",
                                    "reason": "built on cpu: nothing compiled for a GPU"}
    assert not (tmp_path / "e" / kc.PACK_FILE).exists()
    _, loaded = load_engine_model(tmp_path / "e", "cpu")
    assert "no packed kernels" in loaded["kernel_cache_install"]["reason"]


@pytest.mark.parametrize("kv, cc, want", [("auto", (9, 0), ["auto", "fp8"]), ("auto", (8, 0), ["auto"]),
                                          ("fp8", (9, 0), ["auto"])])
def test_recording_start_ups_cover_an_fp8_cache_on_fp8_gpus(tmp_path, monkeypatch, kv, cc, want):
    from kiln.build.engine_dir import ENGINE_FORMAT, write_engine_info

    write_engine_info(tmp_path, {"format": ENGINE_FORMAT, "format_version": 1, "quantization": {},
                                 "target": {"name": "h200"}, "dtype": "bfloat16",
                                 "kv_cache": {"dtype": kv}})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: cc)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    assert kc.startup_kv_cache_dtypes(tmp_path, "cuda") == want
    assert kc.startup_kv_cache_dtypes(tmp_path, "cpu") == ["auto"]


def _launcher_like(hash_hex: str) -> str:
    """A cache entry the way Triton's compile_module_from_src writes a launcher: one .so file."""
    from triton.runtime.cache import get_cache_manager

    mgr = get_cache_manager(hash_hex)
    mgr.put(b"\x7fELF not really", "__triton_launcher.cpython-312-x86_64-linux-gnu.so", binary=True)
    return mgr.key


def test_host_code_is_installed_only_when_asked(tmp_path, monkeypatch, fake_cuda):
    """Launchers are native libraries the process would import: an engine's load installs its
    GPU kernels by default and the launchers only under KILN_ENGINE_KERNELS=all."""
    a = _cache_at(monkeypatch, tmp_path / "a")
    kernel, _ = _compile_like(_hash(1), "k")
    launcher = _launcher_like(_hash(2))
    (tmp_path / "engine").mkdir()
    kc.pack_entries(a, [kernel, launcher], tmp_path / "engine" / kc.PACK_FILE)
    info = {"path": str(tmp_path / "engine"),
            "kernel_cache": {"status": "packed", "triton": triton.__version__,
                             "compute_capability": [9, 0], "entries": 2}}
    b = _cache_at(monkeypatch, tmp_path / "b")
    done = kc.install_engine_kernels(info, "cuda")
    assert (done["installed"], done["host_code_skipped"], done["mode"]) == (1, 1, "kernels")
    assert (b / kernel).is_dir() and not (b / launcher).exists()
    monkeypatch.setenv("KILN_ENGINE_KERNELS", "all")
    done = kc.install_engine_kernels(info, "cuda")
    assert (done["installed"], done["present"], done["host_code_skipped"]) == (1, 1, 0)
    assert [p.name for p in (b / launcher).iterdir()] == ["__triton_launcher.cpython-312-x86_64-linux-gnu.so"]
    assert kc.is_host_code("cuda_utils.cpython-311-x86_64-linux-gnu.so") and kc.is_host_code("x.so.1")
    assert not any(kc.is_host_code(n) for n in ("k.cubin", "k.json", "__grp__k.json", "k.ptx", "k.llir"))


def test_bench_summary_names_the_installed_kernels():
    from kiln.bench.common import packed_kernels_note

    assert packed_kernels_note(None) == "" and packed_kernels_note({"packed_kernels": {"reason": "x"}}) == ""
    got = packed_kernels_note({"packed_kernels": {"installed": 51, "present": 0, "host_code_skipped": 40}})
    assert got == ", 51 packed kernels installed (0 already cached; 40 launchers left to compile, " \
                  "KILN_ENGINE_KERNELS=all)"
    built = {"installed": 51, "present": 0, "host_code_skipped": 40,
             "launchers": {"built": 39, "present": 0, "mismatch": 0, "failed": 0, "seconds": 1.24}}
    assert packed_kernels_note({"packed_kernels": built}) == \
        ", 51 packed kernels installed (0 already cached; 39 launchers compiled here in 1.2 s " \
        "in the background)"


_SIG = {"x_ptr": "*bf16", "out_ptr": "*fp8e4nv", "n": "i32", "eps": "fp32", "pair": ("i64", "*fp32"),
        "BLOCK": "constexpr"}


def test_launcher_specs_are_data_and_regenerate_the_same_source(monkeypatch):
    """A launcher travels as its signature's type names and the hash of the C source made of them;
    this machine's Triton makes the source again and it must hash the same."""
    from triton.backends.nvidia import driver as drv

    original = drv.make_launcher
    kc.start_recording()
    try:
        assert drv.make_launcher is not original
        src = drv.make_launcher({}, _SIG, None)  # what CudaLauncher does for each kernel
        drv.make_launcher({}, _SIG, None)  # the same signature again: recorded once
        other = dict(_SIG, x_ptr="*fp16")  # pointers are pointers to a launcher: the same source
        assert drv.make_launcher({}, other, None) == src
    finally:
        kc.stop_recording()
    assert drv.make_launcher is original  # restored
    specs = kc.recorded_launchers()
    assert len(specs) == 1 and json.loads(json.dumps(specs)) == specs
    assert specs[0]["signature"] == ["*bf16", "*fp8e4nv", "i32", "fp32", ["i64", "*fp32"], "constexpr"]
    assert kl.launcher_source(specs[0]) == src
    tampered = dict(specs[0], src_sha256="0" * 64)
    assert kl.launcher_source(tampered) is None
    assert kl.build_launcher(tampered) == "mismatch"
    for bad in (["*bf16; system(\"x\")"], ["i32", {"not": "a type"}], "i32", None):
        assert kl.launcher_source(dict(specs[0], signature=bad)) is None
    assert kl.launcher_spec({"a": "*bf16", "b": object()}, None, src) is None
    kc.start_recording()
    kc.start_recording()  # started twice: one stop still gives Triton back its own
    kc.stop_recording()
    assert drv.make_launcher is original


def test_launchers_compile_here_from_the_pack_in_the_background(tmp_path, monkeypatch, fake_cuda):
    """The default load: GPU kernels installed, the launchers compiled by this machine (here the
    C compiler is stood in for: the CPU machine has no libcuda to link against) into the entry
    Triton's own first launch would look up."""
    import hashlib
    import sysconfig

    import triton.runtime.build as tbuild
    from triton.backends.nvidia import driver as drv
    from triton.runtime.cache import get_cache_manager

    compiled = []

    def fake_build(name, src_path, tmpdir, *args):
        compiled.append(Path(src_path).read_text())
        so = Path(tmpdir) / f"{name}.so"
        so.write_bytes(b"\x7fELF built here")
        return str(so)

    monkeypatch.setattr(tbuild, "_build", fake_build)
    monkeypatch.setattr(drv, "library_dirs", lambda: [])
    a = _cache_at(monkeypatch, tmp_path / "a")
    kernel, _ = _compile_like(_hash(1), "k")
    launcher = _launcher_like(_hash(2))
    src = drv.make_launcher({}, _SIG, None)
    spec = kl.launcher_spec(_SIG, None, src)
    (tmp_path / "engine").mkdir()
    pack = tmp_path / "engine" / kc.PACK_FILE
    summary = kc.pack_entries(a, [kernel, launcher], pack, [spec])
    assert summary["launchers"] == 1 and kc.read_launchers(pack) == [spec]
    info = {"path": str(tmp_path / "engine"),
            "kernel_cache": {"status": "packed", "triton": triton.__version__,
                             "compute_capability": [9, 0], "entries": 2}}
    b = _cache_at(monkeypatch, tmp_path / "b")
    done = kc.install_engine_kernels(info, "cuda")
    assert done["skipped"] == 0 and done["launchers_building"] == 1
    counts = kl.wait_launcher_build(timeout=60)
    assert counts["built"] == 1 and counts["failed"] == 0 and done["launchers"] == counts
    assert compiled == [src]
    key = hashlib.sha256((src + tbuild.platform_key()).encode()).hexdigest()
    name = f"__triton_launcher{sysconfig.get_config_var('EXT_SUFFIX')}"
    found = get_cache_manager(key).get_file(name)  # where CudaLauncher looks
    assert found and Path(found).read_bytes() == b"\x7fELF built here" and Path(found).parent.parent == b
    assert kl.build_launchers([spec])["present"] == 1 and len(compiled) == 1  # never twice
    assert kl.build_launchers([spec, dict(spec)])["present"] == 1  # one source, looked at once
    monkeypatch.setenv("KILN_ENGINE_LAUNCHERS", "0")  # the lazy way, as Triton alone does
    c = _cache_at(monkeypatch, tmp_path / "c")
    done = kc.install_engine_kernels(info, "cuda")
    assert done["launchers_building"] == 0 and not (c / key).exists()


def test_launchers_really_compile_in_parallel_with_the_system_compiler(tmp_path, monkeypatch):
    """Triton's own C source for each recorded launcher, compiled by gcc several at a time (linked
    against a stand-in libcuda.so.1: this machine has no GPU driver), lands as a Python extension
    in the cache entry Triton's first launch looks up."""
    import shutil
    import sysconfig

    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    from triton.backends.nvidia import driver as drv
    from triton.runtime.build import platform_key
    from triton.runtime.cache import get_cache_manager

    stub = tmp_path / "stubcuda"
    stub.mkdir()
    (stub / "s.c").write_text("void kiln_stand_in(void) {}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(stub / "libcuda.so.1"), str(stub / "s.c")],
                   check=True)
    monkeypatch.setattr(drv, "library_dirs", lambda: [str(stub)])
    _cache_at(monkeypatch, tmp_path / "cache")
    sigs = [_SIG, {"a": "*fp16", "n": "i64"}, {"q": "*i8", "n": "i32", "m": "i32", "B": "constexpr"}]
    specs = [kl.launcher_spec(s, None, drv.make_launcher({}, s, None)) for s in sigs]
    counts = kl.build_launchers(specs, workers=3)
    assert (counts["built"], counts["failed"], counts["mismatch"]) == (3, 0, 0), counts
    name = f"__triton_launcher{sysconfig.get_config_var('EXT_SUFFIX')}"
    for s in sigs:
        key = hashlib.sha256((drv.make_launcher({}, s, None) + platform_key()).encode()).hexdigest()
        so = get_cache_manager(key).get_file(name)
        assert so is not None and Path(so).read_bytes()[:4] == b"\x7fELF"
        if shutil.which("nm"):  # a Python extension: it exports the module's init function
            nm = subprocess.run(["nm", "-D", so], capture_output=True, text=True, check=True)
            assert "PyInit___triton_launcher" in nm.stdout
    assert kl.build_launchers(specs)["present"] == 3
