"""Build script for sportsnet.

Package metadata lives here (not in pyproject.toml) because building the fused Grad-CAM extension
``sportsnet._C`` from csrc/ needs code. It is built against the torch that is already installed (install with
--no-build-isolation; nothing here asks for another torch), and it is optional: sportsnet.ops uses the
pure-PyTorch reference without it. What gets built:

- CUDA and C++ where a CUDA build of torch and a CUDA toolkit (nvcc) are present (FORCE_CUDA=1 forces CUDA),
  for TORCH_CUDA_ARCH_LIST if set, else for the visible GPU's architecture only, else (no GPU visible) for every
  architecture the installed torch was built for (sportsnet/ops/_build.py: cuda_arch_list). The list is recorded
  in sportsnet/_C_cuda_archs.txt, which sportsnet.ops checks a GPU against at run time.
- C++ only without nvcc, or with SPORTSNET_BUILD_CUDA=0.
- Nothing without a working C++ compiler ($CXX, else c++, g++ or clang++ on PATH), when torch is not importable
  (an isolated build), or with SPORTSNET_BUILD_EXT=0. The reason is printed (pip shows it with -v) and recorded
  in sportsnet/_C_not_built.txt, which sportsnet.ops names when it falls back to the reference (a source checkout
  first tries to build just in time).

A compile that fails leaves the install without the extension, for the same fallback, unless
SPORTSNET_REQUIRE_EXT=1: then a missing compiler or a failed build fails the install, as for the Makefile's own
install, whose tests require the extension. Users: pip install --no-build-isolation . (docs/install.md).
"""
import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    for line in (ROOT / "sportsnet" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("sportsnet/__init__.py has no __version__ line")


def build_helpers():
    """sportsnet/ops/_build.py, loaded by path: importing the package here would need torch."""
    spec = importlib.util.spec_from_file_location("_sportsnet_build", ROOT / "sportsnet" / "ops" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = build_helpers()


def strict() -> bool:
    """SPORTSNET_REQUIRE_EXT=1: the extension must be built (an error otherwise), as sportsnet.ops then requires it."""
    return os.environ.get("SPORTSNET_REQUIRE_EXT") == "1"


def not_built(reason: str, folders: list[Path]) -> None:
    """Record why the extension is not installed, for sportsnet.ops's fallback message, or fail under strict()."""
    if strict():
        raise SystemExit(f"sportsnet: sportsnet._C was not built: {reason}; SPORTSNET_REQUIRE_EXT=1 requires it")
    print(f"sportsnet: installing without sportsnet._C: {reason}. sportsnet.ops will use the pure-PyTorch reference.")
    for folder in folders:
        (folder / BUILD.ARCHS_RECORD).unlink(missing_ok=True)
        (folder / BUILD.NOT_BUILT_RECORD).write_text(reason + "\n")


def extensions():
    b = BUILD
    package = ROOT / "sportsnet"
    (package / b.NOT_BUILT_RECORD).unlink(missing_ok=True)
    if os.environ.get("SPORTSNET_BUILD_EXT", "1") == "0":
        print("sportsnet: SPORTSNET_BUILD_EXT=0, not building sportsnet._C")
        (package / b.NOT_BUILT_RECORD).write_text("SPORTSNET_BUILD_EXT=0 at install\n")
        return [], {}
    compiler = b.find_cxx_compiler()  # up front: torch's build would fail on it with a long trace
    if compiler.command is None:
        not_built(compiler.problem, [package])
        return [], {}
    try:
        import torch
    except ImportError:
        not_built("torch is not importable in this build environment (install with --no-build-isolation into the "
                  "environment that has torch to build it)", [package])
        return [], {}
    cuda_home = b.cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it at import
    ninja = b.ninja_folder()  # BuildExtension compiles in parallel with ninja, one file at a time without it
    if ninja and ninja not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([ninja, os.environ.get("PATH", "")])
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    if b.cuda_build_disabled():
        with_cuda, no_cuda = False, "SPORTSNET_BUILD_CUDA=0"
    elif os.environ.get("FORCE_CUDA") == "1":
        with_cuda, no_cuda = True, ""
    else:
        with_cuda = torch.version.cuda is not None and cuda_home is not None
        no_cuda = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA toolkit with nvcc found"
    record = package / b.ARCHS_RECORD
    record.unlink(missing_ok=True)
    if with_cuda:
        archs, why = b.cuda_arch_list(b.torch_arch_names(torch), b.visible_gpu_capabilities(torch))
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        record.write_text(archs + "\n")  # what sportsnet.ops checks a GPU against at run time
        note = f" and CUDA ({archs}: {why})"
    else:
        note = f" only ({no_cuda})"
    print(f"sportsnet: building sportsnet._C for CPU{note} against torch {torch.__version__} with "
          f"{' '.join(compiler.command)}")
    ext = (CUDAExtension if with_cuda else CppExtension)(
        "sportsnet._C",
        sources=b.sources(ROOT, with_cuda),
        include_dirs=[str(b.csrc_dir(ROOT)), *b.extra_include_dirs()],
        extra_compile_args={"cxx": b.CXX_FLAGS, "nvcc": b.NVCC_FLAGS},
        extra_link_args=b.LINK_FLAGS,
    )

    class OptionalBuildExtension(BuildExtension):
        """A failed build installs the package without the extension (not under SPORTSNET_REQUIRE_EXT=1)."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # a compile or link error, nvcc and torch of different CUDA majors...
                if strict():
                    raise
                first = next((line for line in str(e).splitlines() if line.strip()), "")
                hint = "; SPORTSNET_BUILD_CUDA=0 builds the C++ kernel alone" if with_cuda else ""
                built = Path(self.build_lib) / "sportsnet"
                not_built(f"its build failed ({type(e).__name__}: {first[:300]}){hint}",
                          [package, *([built] if built.is_dir() else [])])

    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = extensions()

# pytorch-grad-cam and torchcam, the peers our CAM methods are compared with: pinned, and installed with the
# pinned torch pair by the Makefile, so they cannot pull another torch.
PEERS = ["grad-cam==1.5.7", "torchcam==0.5.0"]
APP = ["gradio>=5,<7"]

setup(
    name="sportsnet",
    version=read_version(),
    description="Sports image classification (VGG19, CLIP) with fused Grad-CAM explanations",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sportsnet", "sportsnet.*"]),
    package_data={"sportsnet": [BUILD.ARCHS_RECORD, BUILD.NOT_BUILT_RECORD],
                  "sportsnet.data": ["*.json"],
                  "sportsnet.models": ["clip_configs/*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "pillow",
        "ninja",
        "tqdm",
        "tensorboard",
        "open-clip-torch>=3.2,<4",
        "matplotlib",
    ],
    # app: the interactive explorer (python -m sportsnet.apps.explore), Gradio.
    # PEERS: the test extra's parity tests of the CAM methods, and the bench extra's peers of
    # benchmarks/bench_methods.py, which also keeps numpy's BLAS (pytorch-grad-cam's) to one thread with
    # threadpoolctl. Quantus: the reference of the metric families and similarities (tests/cam/test_quality.py);
    # it pins no torch. nbclient, nbformat and ipykernel execute the notebooks (tools/run_notebooks.py);
    # websocket-client drives the headless browser of the explorer's test. None of the extras is needed by the
    # library or its other programs; make install installs all three.
    extras_require={"app": APP,
                    "test": ["pytest", "pytest-xdist", "ruff==0.17.6", "quantus==0.6.0", *PEERS, *APP,
                             "nbclient", "nbformat", "ipykernel", "websocket-client"],
                    "bench": [*PEERS, "threadpoolctl"]},
)
