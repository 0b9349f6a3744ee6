"""Which GPU architectures the CUDA kernel is built for, and what a GPU it was not built for gets: the
decision with the capability injected (so it runs on CPU-only machines), and the built library's SASS. Also
whether there is a C++ compiler to build with, and what setup.py decides from both (run in a copy of its files,
without building)."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sportsnet.ops import _build, backend, fused
from sportsnet.ops.fused import has_kernel
from tests.support import ROOT

TORCH_213_CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch.cuda.get_arch_list()


def test_the_default_list_is_the_architectures_torch_was_built_for(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    archs, why = _build.cuda_arch_list(["sm_75", "sm_80", "sm_86", "sm_90", "sm_90a", "sm_100", "sm_120"])
    assert archs == "7.5;8.0;8.6;9.0;10.0;12.0+PTX" and "torch" in why  # sm_90a: architecture-specific, left out
    assert _build.cuda_arch_list([])[0] == _build.FALLBACK_CUDA_ARCH_LIST
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.9")
    assert _build.cuda_arch_list(["sm_75"]) == ("8.9", "TORCH_CUDA_ARCH_LIST")  # the user's choice wins
    if torch.cuda.get_arch_list():  # older torch answers only with a GPU; torch_arch_names then asks torch._C
        assert _build.torch_arch_names(torch) == list(torch.cuda.get_arch_list())


@pytest.mark.parametrize("gpus, expected", [
    ([(7, 5)], "7.5+PTX"),  # a T4 (Colab, Kaggle): one architecture, not torch's six
    ([(8, 0), (7, 5), (8, 0)], "7.5;8.0+PTX"),  # every visible GPU, once each
    ([(8, 9)], "8.9+PTX"),  # not in torch's list: still its own (nvcc knows every architecture below torch's newest)
    ([(12, 1)], "12.0+PTX"),  # newer than torch's newest: capped there (sm_120 code runs on 12.1)
    ([(13, 0)], "12.0+PTX"),  # and a newer major one runs its PTX
])
def test_a_visible_gpu_gets_its_own_architecture_only(monkeypatch, gpus, expected):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    archs, why = _build.cuda_arch_list(TORCH_213_CU130, gpus)
    assert archs == expected and "visible GPU" in why
    assert all(_build.covers(gpu, archs) for gpu in gpus)  # what sportsnet.ops checks at run time
    for unset in ("", "native"):  # torch's word for the visible GPUs
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", unset)
        assert _build.cuda_arch_list(TORCH_213_CU130, gpus)[0] == expected


def test_the_users_arch_list_wins_and_without_a_gpu_torchs_list_is_built(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert _build.cuda_arch_list(TORCH_213_CU130, [(7, 5)]) == ("8.6", "TORCH_CUDA_ARCH_LIST")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    archs, why = _build.cuda_arch_list(TORCH_213_CU130, [])
    assert archs == "7.5;8.0;8.6;9.0;10.0;12.0+PTX" and "no GPU visible" in why
    assert _build.cuda_arch_list(TORCH_213_CU130, None)[0] == archs
    assert _build.cuda_arch_list([], [])[0] == _build.FALLBACK_CUDA_ARCH_LIST


def _torch_like(cuda: str | None, gpus: list[tuple[int, int]]):
    """torch's answers on a machine with these GPUs (only the calls visible_gpu_capabilities makes)."""
    return SimpleNamespace(version=SimpleNamespace(cuda=cuda), cuda=SimpleNamespace(
        is_available=lambda: bool(gpus), device_count=lambda: len(gpus), get_device_capability=lambda i: gpus[i]))


def test_the_visible_gpus_capabilities_come_from_torch():
    assert _build.visible_gpu_capabilities(_torch_like("13.0", [(8, 0), (7, 5), (8, 0)])) == [(7, 5), (8, 0)]
    assert _build.visible_gpu_capabilities(_torch_like("13.0", [])) == []
    assert _build.visible_gpu_capabilities(_torch_like(None, [(7, 5)])) == []  # a CPU-only torch builds no CUDA
    expected = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}) \
        if torch.cuda.is_available() else []
    assert _build.visible_gpu_capabilities(torch) == expected


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_a_missing_or_broken_compiler_is_found_out(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "nowhere" / "c++"))
    found = _build.find_cxx_compiler()
    assert found.command is None and f"CXX={tmp_path / 'nowhere' / 'c++'}" in found.problem
    assert "is not found" in found.problem
    monkeypatch.setenv("CXX", str(_script(tmp_path, "broken", "echo 'fatal error: cstddef: No such file' >&2; exit 1")))
    found = _build.find_cxx_compiler()
    assert found.command is None and "failed to compile a test file (exit 1: fatal error: cstddef" in found.problem
    monkeypatch.delenv("CXX")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    found = _build.find_cxx_compiler()
    assert found.command is None and found.problem == (
        "no C++ compiler: $CXX is not set and there is no c++, g++ or clang++ on PATH")


REAL_CXX = next((shutil.which(c) for c in _build.CXX_CANDIDATES if shutil.which(c)), None)


@pytest.mark.skipif(REAL_CXX is None, reason="no C++ compiler here")
def test_cxx_is_honoured_and_path_is_searched_past_a_broken_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", f"{REAL_CXX} -O0")  # a command with arguments, as setuptools and torch take it
    assert _build.find_cxx_compiler() == (_build.Compiler([REAL_CXX, "-O0"]))
    monkeypatch.delenv("CXX")
    folder = tmp_path / "bin"
    folder.mkdir()
    _script(folder, "c++", "exit 1")  # first on PATH, but it does not compile
    (folder / "clang++").symlink_to(REAL_CXX)
    monkeypatch.setenv("PATH", str(folder))
    assert _build.find_cxx_compiler().command == ["clang++"]


def _setup_decides(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`python setup.py --name` in a copy of the files it reads: it decides what to build and says so, builds
    nothing, and writes its records into the copy, not into this checkout."""
    copy = tmp_path / "repo"
    for name in ["setup.py", "README.md", "sportsnet/__init__.py", "sportsnet/ops/_build.py",
                 *(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file())]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    keep = {k: v for k, v in os.environ.items() if k not in (
        "CXX", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "SPORTSNET_BUILD_EXT", "SPORTSNET_BUILD_CUDA",
        "SPORTSNET_REQUIRE_EXT")}
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=copy, env={**keep, **env}, capture_output=True,
                          text=True, timeout=300)


def test_setup_py_installs_without_the_extension_when_there_is_no_compiler(tmp_path):
    missing = str(tmp_path / "nowhere" / "c++")
    out = _setup_decides(tmp_path, CXX=missing)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"sportsnet: installing without sportsnet._C: no working C++ compiler (CXX={missing})" in out.stdout
    record = tmp_path / "repo" / "sportsnet" / _build.NOT_BUILT_RECORD
    assert "no working C++ compiler" in record.read_text()  # what sportsnet.ops names when it falls back
    strict = _setup_decides(tmp_path, CXX=missing, SPORTSNET_REQUIRE_EXT="1")
    assert strict.returncode != 0 and "SPORTSNET_REQUIRE_EXT=1 requires it" in strict.stderr


@pytest.mark.skipif(REAL_CXX is None or torch.version.cuda is None or _build.cuda_home() is None,
                    reason="needs a C++ compiler, a CUDA build of torch and the CUDA toolkit")
def test_setup_py_builds_cpu_only_without_nvcc_and_otherwise_cuda_for_the_chosen_list(tmp_path):
    out = _setup_decides(tmp_path, SPORTSNET_BUILD_CUDA="0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sportsnet: building sportsnet._C for CPU only (SPORTSNET_BUILD_CUDA=0)" in out.stdout
    assert not (tmp_path / "repo" / "sportsnet" / _build.ARCHS_RECORD).exists()
    out = _setup_decides(tmp_path)  # (a user's TORCH_CUDA_ARCH_LIST winning: the cuda_arch_list tests above)
    archs, _ = _build.cuda_arch_list(_build.torch_arch_names(torch), _build.visible_gpu_capabilities(torch))
    assert f"sportsnet: building sportsnet._C for CPU and CUDA ({archs}: " in out.stdout
    assert (tmp_path / "repo" / "sportsnet" / _build.ARCHS_RECORD).read_text() == archs + "\n"


@pytest.mark.parametrize("capability, archs, expected", [
    ((7, 5), "8.0;9.0+PTX", False),  # the old default on a T4 (Kaggle, Colab): "no kernel image"
    ((7, 5), "7.5;8.0;8.6;9.0;10.0;12.0+PTX", True),
    ((8, 6), "8.0;9.0+PTX", True),  # sm_80 machine code runs on 8.6 and 8.9
    ((8, 9), "7.5;8.6", True),
    ((8, 0), "8.6", False),  # not on an older minor version
    ((9, 0), "8.0", False),  # nor on another major one without PTX
    ((10, 0), "8.0;9.0+PTX", True),  # PTX is compiled for newer GPUs when loaded
    ((6, 1), "7.5;8.0+PTX", False),
    ((9, 0), "9.0a", True),  # architecture-specific: a preset TORCH_CUDA_ARCH_LIST on Hopper machines
    ((9, 0), "8.0 9.0a+PTX", True),
    ((10, 0), "9.0a+PTX", False),  # sm_90a code and compute_90a PTX run on 9.0 only
    ((10, 3), "10.0f", True),  # family-specific: the family's later minor versions
])
def test_which_gpus_a_build_covers(capability, archs, expected):
    assert _build.covers(capability, archs) is expected


def test_a_gpu_the_kernel_was_not_built_for_takes_the_reference_with_one_warning(monkeypatch):
    backend()
    monkeypatch.setattr(fused, "_KERNEL_DEVICES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(fused, "_CUDA_ARCHS", "8.0;9.0+PTX")
    monkeypatch.setattr(fused, "_covered", {})
    monkeypatch.setattr(fused, "_cuda_capability", lambda device: (7, 5))  # a T4
    monkeypatch.delenv("SPORTSNET_REQUIRE_EXT", raising=False)
    with pytest.warns(RuntimeWarning, match=r"compiled for architectures 8.0;9.0\+PTX, which do not include this "
                                            r"GPU's 7.5 .*TORCH_CUDA_ARCH_LIST=7.5"):
        assert fused._kernel_for(torch.device("cuda", 0)) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per architecture
        assert fused._kernel_for(torch.device("cuda", 1)) is False
    monkeypatch.setattr(fused, "_cuda_capability", lambda device: (9, 0))  # an H100: the kernel runs
    assert fused._kernel_for(torch.device("cuda", 0)) is True
    monkeypatch.setattr(fused, "_covered", {})
    monkeypatch.setattr(fused, "_cuda_capability", lambda device: (7, 5))
    monkeypatch.setenv("SPORTSNET_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match="SPORTSNET_REQUIRE_EXT=1 forbids the reference fallback"):
        fused._kernel_for(torch.device("cuda", 0))


def test_arch_lists_keep_their_suffixes():
    assert _build.parse_arch_list("7.5;8.0 9.0a+PTX 10.0f Hopper") == [
        (7, 5, False, ""), (8, 0, False, ""), (9, 0, True, "a"), (10, 0, False, "f")]


def _cuobjdump() -> str | None:
    """The toolkit's cuobjdump, or the copy triton ships inside torch's CUDA wheels."""
    home = _build.cuda_home()
    candidates = [shutil.which("cuobjdump"), home and str(Path(home) / "bin" / "cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.mark.skipif(_cuobjdump() is None, reason="no cuobjdump (CUDA toolkit) here")
def test_the_built_library_holds_machine_code_for_every_architecture_in_its_record():
    """CI on a build machine without a GPU: what the library can run on is in its ELF sections."""
    backend()
    if not has_kernel("CUDA"):
        pytest.skip("this build has no CUDA kernel (no nvcc or no CUDA torch at build time)")
    import sportsnet._C

    library = Path(sportsnet._C.__file__)
    record = library.with_name(_build.ARCHS_RECORD)
    assert record.is_file(), f"setup.py writes {record.name} next to the library it builds with CUDA"
    expected = {f"sm_{a.major}{a.minor}{a.variant}" for a in _build.parse_arch_list(record.read_text())}
    listing = subprocess.run([_cuobjdump(), "--list-elf", str(library)], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    built = set(re.findall(r"\.(sm_\d+)\.cubin", listing.stdout))
    assert expected <= built, f"no SASS for {sorted(expected - built)} in {library.name}: {listing.stdout[-1000:]}"
