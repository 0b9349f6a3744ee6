"""What the steps share: the run's context, its programs' environment (the repository importable without an
install, ninja and nvcc found, one CUDA architecture to build), and where the CUDA tools are."""
from __future__ import annotations

import importlib.machinery
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sportsnet.ops import _build

from .programs import ROOT


@dataclass
class Context:
    """What the steps share."""
    python: str
    device: torch.device
    log_dir: Path
    deadline: float  # time.monotonic() at which the budget ends
    budget: float
    env: dict[str, str]  # the programs' environment
    tests: list[str] | None = None
    steps: list[str] = field(default_factory=list)  # the steps chosen, in order
    facts: dict[str, Any] = field(default_factory=dict)  # what one step leaves the next

    def program_env(self, **extra: str) -> dict[str, str]:
        return {**self.env, **extra}

    def module(self, name: str, *args: str) -> list[str]:
        return [self.python, "-m", name, *args]

    def worker(self, name: str, *args: str) -> list[str]:
        """A workload of :mod:`tools.gpu_check.workloads` on this run's device."""
        return self.module("tools.gpu_check.workloads", name, "--device", self.device.type, *args)


def _arch_text(arch: _build.Arch) -> str:
    return f"{arch.major}.{arch.minor}{arch.variant}{'+PTX' if arch.ptx else ''}"


def choose_arch_list(capability: tuple[int, int] | None, given: str | None = None,
                     preset: str | None = None) -> dict[str, Any]:
    """TORCH_CUDA_ARCH_LIST for every program of the run (``value``, and ``why``), one architecture on a GPU.

    ``given`` (``--arch-list``) is used as it is. Otherwise, on a GPU of compute ``capability``, the one entry of a
    ``preset`` list (the environment's, e.g. an image's ``9.0a`` or a long list) that runs on this GPU, the
    exact one first (``9.0a`` or ``9.0`` on a 9.0 GPU, before ``8.0+PTX``); with none, the capability itself. A
    short build either way, and one that covers this GPU. Without a GPU: the preset, else unset (the build's
    default)."""
    if given:
        return {"value": given, "why": "given with --arch-list"}
    if capability is None:
        return {"value": preset or None, "why": "no CUDA GPU: " + ("the preset TORCH_CUDA_ARCH_LIST" if preset
                                                                   else "the build's own default")}
    own = f"{capability[0]}.{capability[1]}"
    running = [a for a in _build.parse_arch_list(preset or "") if _build.arch_covers(a, capability)]
    if running:
        best = max(running, key=lambda a: ((a.major, a.minor) == tuple(capability), a.major, a.minor, a.variant))
        return {"value": _arch_text(best), "why": f"the entry of the preset TORCH_CUDA_ARCH_LIST={preset!r} that "
                                                  f"runs on this {own} GPU: one architecture keeps the build short"}
    why = "this GPU's compute capability: one architecture keeps the build short (--arch-list chooses others)"
    if preset:
        why += f"; the preset TORCH_CUDA_ARCH_LIST={preset!r} has no entry that runs on it"
    return {"value": own, "why": why}


def program_environment(arch: dict[str, Any]) -> dict[str, str]:
    """The programs' environment: the repository importable without an install, no downloads, the arch list,
    ninja's folder (PATH, else beside this interpreter) and the CUDA toolkit's bin/ on PATH (builds run ninja
    and nvcc from there, and tests look for nvcc there)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if arch["value"]:
        env["TORCH_CUDA_ARCH_LIST"] = arch["value"]
    else:
        env.pop("TORCH_CUDA_ARCH_LIST", None)
    home = _build.cuda_home()
    folders = [_build.ninja_folder(), os.path.join(home, "bin") if home else None]
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join([*(f for f in dict.fromkeys(folders) if f and f not in path), *path])
    if home:
        env.setdefault("CUDA_HOME", home)
    return env


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the CUDA toolkit's folder."""
    home = _build.cuda_home() or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    candidates = [shutil.which("compute-sanitizer"), os.path.join(home, "bin", "compute-sanitizer"),
                  os.path.join(home, "compute-sanitizer", "compute-sanitizer")]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def version(cmd: list[str]) -> str | None:
    """The line of ``cmd``'s output that names its version (else its last line), or None if it does not run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    named = [line for line in lines if re.search(r"version|release", line, re.I)]
    return (named or lines or [None])[-1]


def built_library() -> Path | None:
    """``sportsnet/_C`` built for this interpreter (its own extension suffix), if there is one: a library built
    for another Python (carried from another machine) is not this one's."""
    return next((p for s in importlib.machinery.EXTENSION_SUFFIXES if (p := ROOT / "sportsnet" / f"_C{s}").is_file()),
                None)

