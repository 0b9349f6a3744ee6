"""How to build the fused Grad-CAM extension: used by setup.py (ahead of time) and by
``sportsnet.ops`` (just in time). Standard library only, so setup.py can load it without torch."""
from __future__ import annotations

import glob
import os
import shutil
import site
import sys
from pathlib import Path

#: Architectures compiled by default: Ampere (8.0) and Hopper (9.0, plus PTX for newer GPUs).
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
CXX_FLAGS = ["-O3", "-g0", "-fopenmp"]  # -fopenmp: at::parallel_for is serial without it
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
