"""The CPU operator of an earlier git revision, built next to the current one, so a benchmark can time
both in one run (interleaved, on the same machine state): "before and after" without two runs whose
machine load differs.

The revision's csrc/ is exported with ``git archive``, its C++ namespace and its operator namespace are
renamed to ``sportsnet_baseline`` (both libraries live in one process), and it is compiled just in time
for the CPU only (cached in torch's extensions folder, per revision). Its operator is then
``torch.ops.sportsnet_baseline.fused_gradcam``.
"""
from __future__ import annotations

import io
import logging
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch

from sportsnet.ops import _build

log = logging.getLogger(__name__)
NAMESPACE = "sportsnet_baseline"


def _rename(source: str) -> str:
    source = re.sub(r"\bnamespace sportsnet\b", f"namespace {NAMESPACE}", source)
    source = re.sub(r"\bsportsnet::", f"{NAMESPACE}::", source)
    return re.sub(r"\b(TORCH_LIBRARY(?:_IMPL)?)\(sportsnet,", rf"\1({NAMESPACE},", source)


def resolve(revision: str, root: Path) -> str:
    """The full commit hash of ``revision``; a clear error if git does not know it."""
    try:
        return subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        raise SystemExit(f"error: --baseline {revision!r} is not a git revision of {root} ({e})") from None


def load(revision: str, root: Path | None = None):
    """Build (once per commit) and load the CPU operator of ``revision``; return its op packet and the
    full commit hash."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[3]
    commit = resolve(revision, root)
    archive = subprocess.run(["git", "archive", commit, "csrc"], cwd=root, check=True, capture_output=True).stdout
    folder = Path(tempfile.mkdtemp(prefix=f"sportsnet-baseline-{commit[:10]}-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(folder)
    csrc = folder / "csrc"
    for path in csrc.rglob("*"):
        if path.suffix in (".h", ".cpp", ".cu"):
            path.write_text(_rename(path.read_text()))
    sources = [str(p) for p in sorted(csrc.rglob("*.cpp"))]  # the CPU operator: no .cu
    from torch.utils import cpp_extension

    log.info("building the CPU operator of %s (%s) as torch.ops.%s", revision, commit[:10], NAMESPACE)
    cpp_extension.load(name=f"{NAMESPACE}_{commit[:10]}", sources=sources, extra_include_paths=[str(csrc)],
                       extra_cflags=_build.CXX_FLAGS, extra_ldflags=_build.LINK_FLAGS, is_python_module=False)
    return getattr(torch.ops, NAMESPACE).fused_gradcam, commit
