"""Build script for sportsnet.

Package metadata lives here (not in pyproject.toml) because the fused Grad-CAM extension needs
setup.py logic. Install through the Makefile (`make test` / `make demo`), which pins the
torch/torchvision pair and installs with --no-build-isolation against that torch.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    for line in (ROOT / "sportsnet" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("sportsnet/__init__.py has no __version__ line")


setup(
    name="sportsnet",
    version=read_version(),
    description="Sports image classification (VGG19, CLIP) with fused Grad-CAM explanations",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sportsnet", "sportsnet.*"]),
    package_data={"sportsnet.data": ["*.json"]},
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
    extras_require={"test": ["pytest"]},
)
