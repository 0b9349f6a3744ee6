"""How to build the fused Grad-CAM extension: used by setup.py (ahead of time) and by
``sportsnet.ops`` (just in time). Standard library only, so setup.py can load it without torch."""
from __future__ import annotations

import glob
import os
import re
import shutil
import site
import sys
from pathlib import Path
from typing import NamedTuple

#: The GPU architectures compiled when TORCH_CUDA_ARCH_LIST is not set and torch does not say which it
#: was built for (torch >= 2.4 always says): Turing (7.5, the T4 of Kaggle and Colab) to Hopper, plus PTX.
FALLBACK_CUDA_ARCH_LIST = "7.5;8.0;8.6;9.0+PTX"
#: Written next to the package by setup.py: the architecture list the prebuilt library was compiled for.
ARCHS_RECORD = "_C_cuda_archs.txt"
# -fopenmp: at::parallel_for is serial without it. -fno-wrapv: setup.py builds get Python's own CFLAGS
# first, which include -fwrapv; with it GCC may not assume `p + L <= n` loops end, and leaves them scalar
# (Grad-CAM++'s weight pass measured 2x slower). -DNDEBUG: as those CFLAGS have it, so every build (setup.py,
# just in time, the benchmark's baseline) compiles the same code.
CXX_FLAGS = ["-O3", "-g0", "-fno-wrapv", "-DNDEBUG", "-fopenmp"]
NVCC_FLAGS = ["-O3"]
LINK_FLAGS = ["-fopenmp"]


def csrc_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "csrc"


def sources(root: str | os.PathLike, with_cuda: bool) -> list[str]:
    """Source files relative to ``root`` (setuptools wants relative paths)."""
    files = ["csrc/fused_gradcam.cpp", "csrc/cpu/kernel_default.cpp", "csrc/cpu/kernel_avx2.cpp"]
    files += ["csrc/cuda/fused_gradcam.cu"] if with_cuda else []
    missing = [f for f in files if not (Path(root) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"extension sources missing under {root}: {missing}")
    return files


def cuda_home() -> str | None:
    """A CUDA toolkit folder (with include/cuda_runtime.h and bin/nvcc), or None.

    Tries $CUDA_HOME / $CUDA_PATH, the folder above the real nvcc on PATH, then /usr/local/cuda and
    /usr/local/cuda-*. (torch's own guess takes the folder above the first nvcc on PATH, which is wrong
    when that nvcc is a wrapper script in /usr/local/bin.)
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), os.path.dirname(os.path.dirname(nvcc))]
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for c in candidates:
        if (c and os.path.isfile(os.path.join(c, "include", "cuda_runtime.h"))
                and os.path.isfile(os.path.join(c, "bin", "nvcc"))):
            return c
    return None


def extra_include_dirs() -> list[str]:
    """CUDA headers shipped in pip wheels (nvidia/cu13/include holds cusparse.h etc. for CUDA 13 torch)."""
    roots = list(dict.fromkeys([*site.getsitepackages(), site.getusersitepackages(), *sys.path]))
    found: list[str] = []
    for r in roots:
        for d in sorted(glob.glob(os.path.join(r, "nvidia", "cu*", "include"))):
            if os.path.isdir(d) and d not in found:
                found.append(d)
    return found


def arch_list_from_torch(torch_archs: list[str]) -> str:
    """torch's own list (``torch.cuda.get_arch_list()``, e.g. ``['sm_75', 'sm_80', 'sm_90']``) as a
    TORCH_CUDA_ARCH_LIST (``7.5;8.0;9.0+PTX``): machine code for each, PTX of the newest for GPUs newer
    than all of them. Architecture-specific variants (``sm_90a``) are left out."""
    caps = sorted({(int(a[3:-1]), int(a[-1])) for a in torch_archs if re.fullmatch(r"sm_\d\d+", a)})
    if not caps:
        return FALLBACK_CUDA_ARCH_LIST
    return ";".join(f"{major}.{minor}" for major, minor in caps) + "+PTX"


def cuda_arch_list(torch_archs: list[str] | None = None) -> tuple[str, str]:
    """``(list, why)``: TORCH_CUDA_ARCH_LIST if the user set it, else the architectures the installed torch
    was built for (the GPUs torch itself runs on), else :data:`FALLBACK_CUDA_ARCH_LIST`."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], "TORCH_CUDA_ARCH_LIST"
    if torch_archs:
        return arch_list_from_torch(torch_archs), "the architectures torch was built for"
    return FALLBACK_CUDA_ARCH_LIST, "the fallback list (torch named no architectures)"


def torch_arch_names(torch) -> list[str]:
    """The architectures the installed torch was built for, also on a machine without a GPU."""
    names = list(torch.cuda.get_arch_list())
    if not names and hasattr(torch._C, "_cuda_getArchFlags"):  # older torch: empty without a GPU
        names = torch._C._cuda_getArchFlags().split()
    return names


class Arch(NamedTuple):
    """One entry of a TORCH_CUDA_ARCH_LIST: ``9.0a+PTX`` is ``Arch(9, 0, True, "a")``."""
    major: int
    minor: int
    ptx: bool  # PTX too (compiled for newer GPUs when first loaded)
    variant: str = ""  # "a": architecture-specific (runs on this exact GPU only); "f": family-specific


def parse_arch_list(text: str) -> list[Arch]:
    """``"7.5;8.0 9.0a+PTX"`` -> ``[Arch(7, 5, False, ""), Arch(8, 0, False, ""), Arch(9, 0, True, "a")]``.
    Names that are not versions (``Hopper``) are left out."""
    out = []
    for token in re.split(r"[;\s]+", text.strip()):
        m = re.fullmatch(r"(\d+)\.(\d)([af]?)(\+PTX)?", token)
        if m:
            out.append(Arch(int(m.group(1)), int(m.group(2)), bool(m.group(4)), m.group(3)))
    return out


def arch_covers(arch: Arch, capability: tuple[int, int]) -> bool:
    """Whether code compiled for ``arch`` runs on a GPU of compute ``capability``: machine code for the same major
    version and an equal or lower minor one (sm_80 runs on 8.6 and 8.9), or PTX of an equal or lower version
    (compiled for the GPU when first loaded); architecture-specific code (``9.0a``) on that exact GPU only."""
    if arch.variant == "a":
        return (arch.major, arch.minor) == tuple(capability)
    major, minor = capability
    return (arch.major == major and arch.minor <= minor) or (arch.ptx and (arch.major, arch.minor) <= (major, minor))


def covers(capability: tuple[int, int], arch_list: str) -> bool:
    """Whether a library compiled for ``arch_list`` runs on a GPU of compute ``capability`` (:func:`arch_covers`)."""
    return any(arch_covers(arch, capability) for arch in parse_arch_list(arch_list))


def ninja_folder() -> str | None:
    """The folder of the ``ninja`` that builds would run: on PATH, else beside this interpreter (a venv's ``bin``
    that is not on PATH, as on a machine whose python is called by its full path); None without one."""
    found = shutil.which("ninja") or shutil.which("ninja", path=os.path.dirname(sys.executable))
    return os.path.dirname(found) if found else None
