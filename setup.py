"""Build script for sportsnet.

Package metadata lives here (not in pyproject.toml) because building the fused Grad-CAM extension
``sportsnet._C`` from csrc/ needs code: C++ always; CUDA as well when nvcc and a CUDA build of torch
are present (or FORCE_CUDA=1). TORCH_CUDA_ARCH_LIST defaults to the architectures the installed torch
was built for (sportsnet/ops/_build.py). SPORTSNET_BUILD_EXT=0
skips the extension (sportsnet.ops then builds it just in time or uses the pure-PyTorch reference).

Install through the Makefile (`make test` / `make demo`): it pins the torch/torchvision pair and installs
with --no-build-isolation, so the extension is compiled against that torch.
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


def extensions():
    if os.environ.get("SPORTSNET_BUILD_EXT", "1") == "0":
        print("sportsnet: SPORTSNET_BUILD_EXT=0, not building sportsnet._C")
        return [], {}
    try:
        import torch
    except ImportError:
        print("sportsnet: torch is not importable in this build environment; not building sportsnet._C "
              "(install with --no-build-isolation against your torch to build it)")
        return [], {}
    b = build_helpers()
    cuda_home = b.cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it at import
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (torch.version.cuda is not None and cuda_home is not None)
    record = ROOT / "sportsnet" / b.ARCHS_RECORD
    record.unlink(missing_ok=True)
    cuda_note = ""
    if with_cuda:
        archs, why = b.cuda_arch_list(b.torch_arch_names(torch))
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        record.write_text(archs + "\n")  # what sportsnet.ops checks a GPU against at run time
        cuda_note = f" and CUDA ({archs}: {why})"
    print(f"sportsnet: building sportsnet._C for CPU{cuda_note} against torch {torch.__version__}")
    ext = (CUDAExtension if with_cuda else CppExtension)(
        "sportsnet._C",
        sources=b.sources(ROOT, with_cuda),
        include_dirs=[str(b.csrc_dir(ROOT)), *b.extra_include_dirs()],
        extra_compile_args={"cxx": b.CXX_FLAGS, "nvcc": b.NVCC_FLAGS},
        extra_link_args=b.LINK_FLAGS,
    )
    return [ext], {"build_ext": BuildExtension}


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
    package_data={"sportsnet": [build_helpers().ARCHS_RECORD], "sportsnet.data": ["*.json"],
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
