"""``python -m tools.check_install``: ``pip install`` of this repository into an environment that already has
torch (as on Colab or Kaggle) downloads nothing, never another torch, and builds what the machine allows.

From the repository root, with the interpreter whose torch is to be reused (CI: the project's ``.venv``):

    .venv/bin/python -m tools.check_install                    # the CI cases, about 2 minutes on 2 cores
    .venv/bin/python -m tools.check_install --measure-cuda     # also time CUDA builds (needs nvcc; not for CI)

Each case gets a fresh copy of the working tree (tracked and untracked files that git does not ignore: no
``.venv``, no built library) and a fresh virtual environment in a temporary folder. That environment reuses this
interpreter's packages without copying them: a ``.pth`` file names this interpreter's site-packages, so pip sees
torch, torchvision and the other dependencies as installed. Into it: ``pip install --no-build-isolation --no-index
<copy>[app]`` (no index, no find-links, no pip configuration: every dependency must already be satisfied), then a
smoke test in a fresh interpreter: ``import torch`` is this interpreter's torch (the new environment's own
site-packages holds nothing but sportsnet), ``sportsnet.ops`` reports the expected backend, and Grad-CAM of a
torchvision ResNet-18 (random weights, nothing downloaded) through ``sportsnet.cam`` gives finite maps of the
right shape. The cases (``--cases``):

- ``cpu``: C++ only, nvcc hidden (``SPORTSNET_BUILD_CUDA=0``): the compiled CPU kernel, no CUDA kernel.
- ``none``: no C++ compiler (``CXX`` names a missing file; PATH keeps only folders without one): the install
  succeeds without ``sportsnet._C``, and ``sportsnet.ops`` uses the reference with one warning naming the missing
  compiler; so does a source checkout, whose just-in-time build is not attempted.
- ``strict``: the same under ``SPORTSNET_REQUIRE_EXT=1`` (the Makefile's install): the install fails, saying why.

``--measure-cuda`` adds two timed CUDA builds (they compile; only a GPU could run them): ``cuda-one``
(``TORCH_CUDA_ARCH_LIST=7.5+PTX``, what a visible T4 gets) and ``cuda-all`` (the architectures torch was built
for, what a build without a visible GPU gets). One line per case with the install's seconds; the exit status is 1
if any case failed, each failure named. The environment this runs in is not modified (checked).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sportsnet.ops import _build

ROOT = Path(__file__).resolve().parents[1]
#: Compiler drivers a PATH without a compiler must not hold.
COMPILERS = ("c++", "g++", "clang++", "gcc", "cc", "clang")
#: Environment variables that would change what is built or where pip looks: dropped, then set per case.
DROPPED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CXX", "CC", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST",
           "SPORTSNET_BUILD_EXT", "SPORTSNET_BUILD_CUDA", "SPORTSNET_REQUIRE_EXT")
INSTALL_TIMEOUT = 600
SMOKE_TIMEOUT = 300

SMOKE = r"""
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, torchvision
    import sportsnet
    from sportsnet import ops
    from sportsnet.cam import GradCAM
    from sportsnet.ops import fused
    chosen = ops.backend()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    with GradCAM(model) as cam:
        maps = cam(torch.rand(2, 3, 64, 64), top_k=2).maps
        maps = cam(torch.rand(2, 3, 64, 64), top_k=2).maps  # a second call: still one message
messages = [str(w.message) for w in caught if "compiled operator" in str(w.message) or "sportsnet._C" in str(w.message)]
print(json.dumps({"torch": torch.__file__, "torchvision": torchvision.__file__, "sportsnet": sportsnet.__file__,
                  "backend": chosen, "devices": sorted(fused._KERNEL_DEVICES), "archs": fused._CUDA_ARCHS,
                  "messages": messages, "shape": list(maps.shape), "finite": bool(torch.isfinite(maps).all()),
                  "in_range": bool(((maps >= 0) & (maps <= 1)).all())}))
"""


@dataclass
class Case:
    name: str
    title: str
    env: dict[str, str] = field(default_factory=dict)
    installs: bool = True  # False: the install must fail
    said: str = ""  # text the install's output must hold
    backend: str = "compiled"
    devices: tuple[str, ...] = ("cpu",)
    message: str = ""  # text of the one fallback warning (backend "reference")
    archs: str | None = None  # the CUDA architectures the library must be built for
    checkout: str = ""  # also from the source tree (the just-in-time path): text of its one warning
    timeout: int = INSTALL_TIMEOUT  # seconds the install may take


@dataclass
class Outcome:
    case: Case
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    note: str = ""


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux: /proc), found before any is killed. ninja starts each compiler in a
    process group of its own, so killing pip's group alone would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run, but when it times out or this check is stopped, everything it started (pip's build
    backend, ninja, the compilers) is killed with it."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kwargs) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except BaseException:
            for pid in [*descendants(process.pid), process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def site_dirs() -> list[Path]:
    """This interpreter's site-packages (where its torch is)."""
    paths = sysconfig.get_paths()
    return [Path(p) for p in dict.fromkeys([paths["purelib"], paths["platlib"]])]


def listing(dirs: list[Path]) -> dict[str, list[str]]:
    return {str(d): sorted(os.listdir(d)) if d.is_dir() else [] for d in dirs}


def path_without_compilers(path: str) -> str:
    """PATH without the folders that hold a C++ (or C) compiler driver."""
    keep = [d for d in path.split(os.pathsep) if d and not any(os.path.exists(os.path.join(d, c)) for c in COMPILERS)]
    return os.pathsep.join(keep)


def copy_tree(dest: Path) -> None:
    """The working tree as a clone plus uncommitted work would have it: git's tracked and untracked, not ignored,
    files (no .venv, no built library, no build/), so nothing there is read or written by the install."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "data", "runs", "outputs", "*.so",
                                        "__pycache__", "*.egg-info", _build.ARCHS_RECORD, _build.NOT_BUILT_RECORD)
        shutil.copytree(ROOT, dest, ignore=ignore)
        return
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def make_venv(folder: Path) -> tuple[Path, Path]:
    """A virtual environment without pip of its own whose python also sees this interpreter's site-packages
    (after its own): pip (this interpreter's, run by the new python) installs into the new one."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    (own / "_sportsnet_reused_env.pth").write_text("".join(f"{d}\n" for d in site_dirs()))
    return python, own


def base_env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in DROPPED}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1",
               TORCH_EXTENSIONS_DIR=str(scratch / "torch_extensions"), OMP_WAIT_POLICY="PASSIVE")
    return env


def smoke(python: Path, cwd: Path, env: dict[str, str]) -> dict:
    result = run([str(python), "-c", SMOKE], SMOKE_TIMEOUT, cwd=cwd, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-1500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_smoke(out: dict, case: Case, own: Path, package_root: Path, expected_message: str) -> list[str]:
    """What a smoke test's output must say; an empty list when it does."""
    failures = []
    reused = [str(d) for d in site_dirs()]
    for module in ("torch", "torchvision"):
        if not any(out[module].startswith(d + os.sep) for d in reused):
            failures.append(f"import {module} gave {out[module]}, not the reused environment's ({', '.join(reused)})")
    if not out["sportsnet"].startswith(str(package_root) + os.sep):
        failures.append(f"import sportsnet gave {out['sportsnet']}, not the copy under {package_root}")
    if out["backend"] != case.backend:
        failures.append(f"sportsnet.ops backend {out['backend']!r}, expected {case.backend!r} "
                        f"(messages: {out['messages']})")
    if case.backend == "compiled" and tuple(out["devices"]) != case.devices:
        failures.append(f"kernels for {out['devices']}, expected {list(case.devices)}")
    if case.archs is not None and out["archs"] != case.archs:
        failures.append(f"CUDA architectures {out['archs']!r}, expected {case.archs!r}")
    if case.backend == "compiled" and out["messages"]:
        failures.append(f"unexpected fallback messages: {out['messages']}")
    if case.backend == "reference" and (len(out["messages"]) != 1 or expected_message not in out["messages"][0]):
        failures.append(f"expected one fallback message containing {expected_message!r}, got {out['messages']}")
    if out["shape"] != [2, 2, 64, 64] or not out["finite"] or not out["in_range"]:
        failures.append(f"Grad-CAM maps of shape {out['shape']} (expected [2, 2, 64, 64]), finite {out['finite']}, "
                        f"in [0, 1] {out['in_range']}")
    return failures


def run_case(case: Case, scratch: Path, extras: str) -> Outcome:
    outcome = Outcome(case)
    folder = scratch / case.name
    src = folder / "src"
    copy_tree(src)
    python, own = make_venv(folder / "venv")
    env = base_env(scratch)
    env.update(case.env)
    log = folder / "install.log"
    command = [str(python), "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-cache-dir", "-v",
               f"{src}[{extras}]" if extras else str(src)]
    start = time.perf_counter()
    try:
        result = run(command, case.timeout, cwd=folder, env=env)
    except subprocess.TimeoutExpired:
        outcome.failures.append(f"pip install did not finish in {case.timeout} s")
        return outcome
    outcome.seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    log.write_text(output)
    said = [line.strip() for line in output.splitlines() if line.strip().startswith("sportsnet:")]
    outcome.note = said[-1] if said else ""
    if case.said and case.said not in output:
        outcome.failures.append(f"the install did not say {case.said!r} (it said: {said or 'nothing'}; log: {log})")
    if not case.installs:
        if result.returncode == 0:
            outcome.failures.append("the install succeeded; it must fail")
        return outcome
    if result.returncode != 0:
        outcome.failures.append(f"pip install failed (exit {result.returncode}): {output.strip()[-2000:]}")
        return outcome
    installed = sorted(p.name for p in own.iterdir() if p.name.endswith(".dist-info"))
    if [name.split("-")[0] for name in installed] != ["sportsnet"]:
        outcome.failures.append(f"the new environment got {installed}: only sportsnet may be installed")
    if (own / "torch").exists():
        outcome.failures.append(f"a torch was installed into {own}")
    try:
        out = smoke(python, folder, env)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        outcome.failures.append(f"smoke test: {e}")
        return outcome
    outcome.failures += check_smoke(out, case, own, own / "sportsnet", case.message)
    if case.checkout:  # the same interpreter from the source tree: its sportsnet has csrc/ beside it
        try:
            out = smoke(python, src, env)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            outcome.failures.append(f"smoke test in the source checkout: {e}")
            return outcome
        outcome.failures += [f"source checkout: {f}" for f in check_smoke(out, case, own, src / "sportsnet",
                                                                          case.checkout)]
    return outcome


def cases(scratch: Path, names: list[str], measure_cuda: bool) -> list[Case]:
    no_compiler = {"CXX": str(scratch / "no-compiler" / "c++"), "PATH": path_without_compilers(os.environ["PATH"])}
    every = {
        "cpu": Case("cpu", "C++ only (nvcc hidden: SPORTSNET_BUILD_CUDA=0)", {"SPORTSNET_BUILD_CUDA": "0"},
                    said="building sportsnet._C for CPU only (SPORTSNET_BUILD_CUDA=0)"),
        "none": Case("none", "no C++ compiler (CXX missing, none on PATH)", no_compiler,
                     said="installing without sportsnet._C: no working C++ compiler", backend="reference",
                     message="sportsnet._C was not built at install: no working C++ compiler",
                     checkout="just-in-time build: no working C++ compiler"),
        "strict": Case("strict", "no C++ compiler, SPORTSNET_REQUIRE_EXT=1: the install fails",
                       {**no_compiler, "SPORTSNET_REQUIRE_EXT": "1"}, installs=False,
                       said="SPORTSNET_REQUIRE_EXT=1 requires it"),
    }
    chosen = [every[n] for n in names]
    if measure_cuda:
        import torch

        full = _build.arch_list_from_torch(_build.torch_arch_names(torch))
        for name, archs, what in [("cuda-one", "7.5+PTX", "a visible T4's"), ("cuda-all", full, "torch's list")]:
            chosen.append(Case(name, f"CUDA for {what} TORCH_CUDA_ARCH_LIST={archs}", {"TORCH_CUDA_ARCH_LIST": archs},
                               said=f"and CUDA ({archs}: TORCH_CUDA_ARCH_LIST)", devices=("cpu", "cuda"), archs=archs,
                               timeout=3600))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.check_install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="cpu,none,strict",
                        help="comma-separated, of cpu, none, strict ('' for none of them, e.g. with --measure-cuda)")
    parser.add_argument("--extras", default="app", help="the extras to install (default: app, as the notebooks)")
    parser.add_argument("--measure-cuda", action="store_true",
                        help="also time CUDA builds for 7.5+PTX and for torch's list (minutes; needs nvcc)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (kept anyway when a case failed; its path is printed)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = sorted(set(names) - {"cpu", "none", "strict"})
    if unknown:
        parser.error(f"unknown cases {unknown}")
    try:
        import torch
    except ImportError:
        print(f"check_install: FAILED: torch is not importable by {sys.executable}, whose torch is to be reused")
        return 1
    print(f"check_install: reusing torch {torch.__version__} of {sys.executable} "
          f"({', '.join(str(d) for d in site_dirs())})", flush=True)
    if args.measure_cuda and _build.cuda_home() is None:
        print("check_install: FAILED: --measure-cuda needs a CUDA toolkit (nvcc)")
        return 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stopped: still clean up
    scratch = Path(tempfile.mkdtemp(prefix="sportsnet-check-install-"))
    before = listing(site_dirs())
    outcomes = []
    try:
        for case in cases(scratch, names, args.measure_cuda):
            outcome = run_case(case, scratch, args.extras)
            outcomes.append(outcome)
            verdict = "FAIL" if outcome.failures else "ok  "
            print(f"check_install: {verdict} {case.name:8} {outcome.seconds:6.1f} s  {case.title}"
                  + (f"  [{outcome.note}]" if outcome.note else ""), flush=True)
        if listing(site_dirs()) != before:
            outcomes.append(Outcome(Case("reused", "the reused environment"),
                                    failures=["its site-packages changed during the check"]))
    finally:
        if args.keep or any(o.failures for o in outcomes):
            print(f"check_install: kept {scratch} (each case's install.log, src/ and venv/)")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    by_name = {o.case.name: o for o in outcomes}
    if "cuda-one" in by_name and "cuda-all" in by_name:
        one, full = by_name["cuda-one"].seconds, by_name["cuda-all"].seconds
        print(f"check_install: CUDA build for one architecture {one:.0f} s, for torch's list {full:.0f} s "
              f"({full / max(one, 1e-9):.1f}x), on {os.cpu_count()} cores")
    failed = [o for o in outcomes if o.failures]
    for o in failed:
        for f in o.failures:
            print(f"check_install: FAILED: {o.case.name} ({o.case.title}): {f}")
    if not failed:
        print(f"check_install: all {len(outcomes)} cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
