"""How to build the fused Grad-CAM extension: used by setup.py (ahead of time) and by
``sportsnet.ops`` (just in time). Standard library only, so setup.py can load it without torch."""
from __future__ import annotations

import glob
import importlib.metadata
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

#: The GPU architectures compiled when TORCH_CUDA_ARCH_LIST is not set and torch does not say which it
#: was built for (torch >= 2.4 always says): Turing (7.5, the T4 of Kaggle and Colab) to Hopper, plus PTX.
FALLBACK_CUDA_ARCH_LIST = "7.5;8.0;8.6;9.0+PTX"
#: Written next to the package by setup.py: the architecture list the prebuilt library was compiled for.
ARCHS_RECORD = "_C_cuda_archs.txt"
#: Written next to the package by setup.py when it installs without the library: why (sportsnet.ops says so).
NOT_BUILT_RECORD = "_C_not_built.txt"
#: The C++ compilers looked for on PATH when $CXX is not set, in this order.
CXX_CANDIDATES = ("c++", "g++", "clang++")
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


def arch_list_for_gpus(capabilities: list[tuple[int, int]], torch_archs: list[str] | None = None) -> str:
    """The TORCH_CUDA_ARCH_LIST for the visible GPUs only, as torch's own just-in-time builds choose it: each GPU's
    compute capability (capped at the newest architecture torch was built for, which nvcc then knows), PTX of the
    newest. A T4 gives ``7.5+PTX``; a T4 and an A100 ``7.5;8.0+PTX``."""
    caps = sorted({(int(c[0]), int(c[1])) for c in capabilities})
    supported = [(int(a[3:-1]), int(a[-1])) for a in torch_archs or [] if re.fullmatch(r"sm_\d\d+", a)]
    if supported:
        caps = sorted({min(c, max(supported)) for c in caps})
    return ";".join(f"{major}.{minor}" for major, minor in caps) + "+PTX"


def cuda_arch_list(torch_archs: list[str] | None = None,
                   gpu_capabilities: list[tuple[int, int]] | None = None) -> tuple[str, str]:
    """``(list, why)``: TORCH_CUDA_ARCH_LIST if the user set it; else, where GPUs are visible
    (``gpu_capabilities``, from :func:`visible_gpu_capabilities`), theirs only (:func:`arch_list_for_gpus`: one
    architecture compiles in a fraction of the time of torch's whole list); else the architectures the installed
    torch was built for (the GPUs torch itself runs on); else :data:`FALLBACK_CUDA_ARCH_LIST`. ``native`` (torch's
    word for the visible GPUs) is taken as not set."""
    user = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if user and user != "native":
        return user, "TORCH_CUDA_ARCH_LIST"
    if gpu_capabilities:
        caps = sorted({(int(c[0]), int(c[1])) for c in gpu_capabilities})
        shown = ", ".join(f"{major}.{minor}" for major, minor in caps)
        return arch_list_for_gpus(caps, torch_archs), f"the visible GPU{'s' if len(caps) > 1 else ''} ({shown})"
    if torch_archs:
        return arch_list_from_torch(torch_archs), "the architectures torch was built for (no GPU visible)"
    return FALLBACK_CUDA_ARCH_LIST, "the fallback list (no GPU visible, and torch named no architectures)"


def visible_gpu_capabilities(torch) -> list[tuple[int, int]]:
    """The compute capabilities of the GPUs torch sees (none without a GPU, or with ``CUDA_VISIBLE_DEVICES=``)."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return []
    return sorted({tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())})


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
    that is not on PATH, as on a machine whose python is called by its full path), else where the ``ninja``
    package's files say its program is (a package seen through another environment's site-packages); None
    without one."""
    found = shutil.which("ninja") or shutil.which("ninja", path=os.path.dirname(sys.executable))
    if not found:
        try:
            files = importlib.metadata.distribution("ninja").files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        programs = [str(f.locate()) for f in files if f.name == "ninja" and "bin" in f.parts]
        found = next((p for p in programs if os.path.isfile(p) and os.access(p, os.X_OK)), None)
    return os.path.dirname(os.path.abspath(found)) if found else None


def cuda_build_disabled() -> bool:
    """``SPORTSNET_BUILD_CUDA=0``: build the C++ (CPU) kernel only, as where nvcc is missing (setup.py and the
    just-in-time build)."""
    return os.environ.get("SPORTSNET_BUILD_CUDA") == "0"


class Compiler(NamedTuple):
    """A C++ compiler that compiled a test file (``command``), or None and why not (``problem``)."""
    command: list[str] | None
    problem: str = ""


_PROBE = "#include <cstddef>\n#include <vector>\nint main() { std::vector<std::size_t> v(1); return int(v[0]); }\n"


def find_cxx_compiler(timeout: float = 60.0) -> Compiler:
    """The C++ compiler a build would use, if it works: $CXX where it is set (as setuptools and torch honour it;
    no other is tried then), else the first of :data:`CXX_CANDIDATES` on PATH that works. "Works": it compiles a
    file that includes the C++ standard library (``-fsyntax-only``, a fraction of a second)."""
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        candidates, named = [shlex.split(cxx)], f"CXX={cxx}"
    else:
        candidates = [[name] for name in CXX_CANDIDATES if shutil.which(name)]
        named = ", ".join(CXX_CANDIDATES[:-1]) + " or " + CXX_CANDIDATES[-1]
        if not candidates:
            return Compiler(None, f"no C++ compiler: $CXX is not set and there is no {named} on PATH")
    problems = []
    for command in candidates:
        if shutil.which(command[0]) is None:
            problems.append(f"{command[0]} is not found")
            continue
        try:
            probe = subprocess.run([*command, "-x", "c++", "-fsyntax-only", "-"], input=_PROBE, text=True,
                                   capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            problems.append(f"{command[0]} did not run ({type(e).__name__}: {e})")
            continue
        if probe.returncode == 0:
            return Compiler(command)
        first = next((line for line in probe.stderr.splitlines() if line.strip()), "")
        problems.append(f"{command[0]} failed to compile a test file (exit {probe.returncode}{': ' if first else ''}"
                        f"{first[:200]})")
    return Compiler(None, f"no working C++ compiler ({named}): " + "; ".join(problems))
