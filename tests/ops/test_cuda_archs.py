"""Which GPU architectures the CUDA kernel is built for, and what a GPU it was not built for gets: the
decision with the capability injected (so it runs on CPU-only machines), and the built library's SASS."""
import importlib.util
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from sportsnet.ops import _build, backend, fused
from sportsnet.ops.fused import has_kernel


def test_the_default_list_is_the_architectures_torch_was_built_for(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    archs, why = _build.cuda_arch_list(["sm_75", "sm_80", "sm_86", "sm_90", "sm_90a", "sm_100", "sm_120"])
    assert archs == "7.5;8.0;8.6;9.0;10.0;12.0+PTX" and "torch" in why  # sm_90a: architecture-specific, left out
    assert _build.cuda_arch_list([])[0] == _build.FALLBACK_CUDA_ARCH_LIST
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.9")
    assert _build.cuda_arch_list(["sm_75"]) == ("8.9", "TORCH_CUDA_ARCH_LIST")  # the user's choice wins
    if torch.cuda.get_arch_list():  # older torch answers only with a GPU; torch_arch_names then asks torch._C
        assert _build.torch_arch_names(torch) == list(torch.cuda.get_arch_list())


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
