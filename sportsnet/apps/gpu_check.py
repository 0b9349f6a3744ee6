"""The GPU acceptance run in one command (``make gpu-check``): the build, the tests, compute-sanitizer, kernel
times, the benchmarks and the tables, each step recorded in one JSON file.

    make gpu-check                                     # .venv's python where there is one, else python3
    python3 -m sportsnet.apps.gpu_check                # the same, from the repository root; no install needed
    python -m sportsnet.apps.gpu_check --steps environment,build,profile
    python -m sportsnet.apps.gpu_check --worker workload --device cuda   # what compute-sanitizer runs

The steps, in this order, each with a time limit inside one budget (``--budget``, 540 s: the run fits in 10
minutes on one H100 or H200). The measurements come first, on a quiet GPU, so that a slow test run cannot starve
them; ``tests`` and ``sanitizer`` then run side by side (CPU-bound, little GPU work):

1. ``environment``: torch, CUDA, the GPU and its compute capability, compute-sanitizer (path and version), nvcc,
   whether open_clip is installed. Where TORCH_CUDA_ARCH_LIST is not set, it is set to this GPU's compute
   capability for every later step, so a build compiles one architecture.
2. ``build``: ``sportsnet._C`` against the installed torch, once: kept where it imports; compiled in place by
   setup.py where there is none (where that fails, or a library is there that does not import, the operator's own
   just-in-time build); then loaded under SPORTSNET_REQUIRE_EXT=1 and run once on each device against the
   reference.
3. ``profile``: torch.profiler's kernel times of the op and of the eager reference at VGG19's conv5 (K = 512,
   7x7 and 14x14 -> 224x224), B = 1 and 256, float32; without CUDA, the CPU op at B = 1 and 8.
4. ``benchmarks``: bench_gradcam, bench_explain, bench_train and bench_data with ``--device cuda``, trimmed to
   fit (:data:`BENCHMARKS`); skipped without CUDA.
5. ``tests``: pytest under SPORTSNET_REQUIRE_EXT=1 on tests/ops and, in a second process, on tests/cam,
   tests/engine and tests/models. Without CUDA only the tests named for CUDA (``-k cuda``): the others are CI's,
   and take far longer than this check on a small CPU.
6. ``sanitizer``: the workload (:func:`workload`) once as it is, checked against the reference, then under
   compute-sanitizer's memcheck, racecheck, synccheck and initcheck, side by side. PyTorch's caching allocator
   is off there, so each tensor is its own allocation: an overrun is caught, not absorbed by a larger cached
   block, and a fresh buffer counts as uninitialised. Every error is attributed to our kernels
   (``sportsnet::`` in the kernel's name), to another kernel (PyTorch's: reported, not failed), or to neither
   (an API error: failed). Without CUDA, the workload runs on the CPU.
7. ``tables``: ``benchmarks/tables.py --update`` after the benchmarks (``--check`` when they did not run), and
   which result files of this run no page shows yet.

Each step ends ``ran`` (nothing to pass or fail), ``passed``, ``failed`` or ``skipped`` (with the reason), with
its duration and key numbers, in ``benchmarks/results/gpu_check_<device>.json``; every program's output is kept
in ``--log-dir``. The exit status is 1 when a step failed (a skip is not a failure).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..ops import _build
from .bench import common

#: The repository (a source checkout: setup.py, csrc/, tests/ beside the package).
ROOT = Path(__file__).resolve().parents[2]
#: Where the benchmarks write their results (``--results-dir`` moves only this run's own file).
BENCH_RESULTS = common.RESULTS
STEPS = ("environment", "build", "profile", "benchmarks", "tests", "sanitizer", "tables")
#: Steps that run side by side: CPU-bound programs with little GPU work. The others run alone, so that kernel
#: times and benchmarks see a quiet GPU.
TOGETHER = ("tests", "sanitizer")
#: Each step's time limit (seconds); the budget left caps it too.
LIMITS_S = {"environment": 60, "build": 300, "tests": 300, "sanitizer": 300, "profile": 90, "benchmarks": 300,
            "tables": 60}
#: Seconds an earlier step leaves for each later one (tests and sanitizer run together: one reserve for both).
RESERVE_S = {"tests": 120, "tables": 30}
BUDGET_S = 540
MIN_STEP_S = 15  # a step that would get less time than this is skipped
TEST_PATHS = ("tests/ops", "tests/cam", "tests/engine", "tests/models")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
#: The benchmarks' flags here: each one's full run is longer than this check can give it. bench_gradcam keeps the
#: batches its table shows and its target (VGG19 B=256 fp32) but not the torch.compile'd reference (minutes of
#: compiling); bench_train one batch, eager only; bench_data a 1,000-image set instead of 13,500.
BENCHMARKS = {
    "gradcam": ["--device", "cuda", "--batches", "1,64,256", "--no-compile", "--max-seconds", "5"],
    "explain": ["--device", "cuda"],
    "train": ["--device", "cuda", "--batches", "64", "--no-compile", "--reps", "5", "--max-seconds", "20"],
    "data": ["--device", "cuda", "--per-class", "10", "--images", "512", "--reps", "3", "--workers", "4",
             "--root", "data/bench/gpu_check_sports224", "--cache-dir", "data/cache/gpu_check_decoded"],
}
BENCH_LIMITS_S = {"gradcam": 150, "explain": 90, "train": 90, "data": 120}
#: The profile step's shapes (K, h, w) -> 224 x 224: VGG19's conv5_4 at a 224 px input is 14x14 (bench_gradcam's
#: target row), 7x7 after the last pooling.
PROFILE_SHAPES = ((512, 7, 7), (512, 14, 14))
PROFILE_BATCHES = {"cuda": (1, 256), "cpu": (1, 8)}
PROFILE_SIZE = (224, 224)
PROFILE_SESSIONS = 3
OUR_KERNELS = "sportsnet"  # our kernels' namespace: in every demangled (and mangled) name
WORKER_MARK = "gpu_check worker: "  # the line a worker prints its JSON result on


# ----------------------------------------------------------------------------------------------------------------
# Running programs


@dataclass
class Program:
    """A finished (or stopped) program: exit status, its output (stdout and stderr together), seconds."""
    returncode: int | None
    output: str
    seconds: float
    timed_out: bool
    log: Path


_running: set[subprocess.Popen] = set()  # the programs running now: stopped if this run is interrupted
_running_lock = threading.Lock()


def run_program(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> Program:
    """Run ``cmd`` in the repository root with its output in ``log``; past ``timeout`` seconds its whole process
    group (it starts its own, so its children go too) is stopped."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        with _running_lock:
            _running.add(proc)
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
        finally:
            with _running_lock:
                _running.discard(proc)
    return Program(proc.returncode, log.read_text(errors="replace"), time.monotonic() - t0, timed_out, log)


def stop_all() -> None:
    """Stop every program still running (this run was interrupted): they are in sessions of their own, which a
    Ctrl-C or the end of this process would not reach."""
    with _running_lock:
        running = list(_running)
    for proc in running:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the program's process group, then SIGKILL if it is still there 10 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def shown(path: Path | str) -> str:
    """``path`` relative to the repository where it is inside it (result files are committed)."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def worker_result(output: str) -> dict[str, Any] | None:
    """The JSON a worker printed (its last ``gpu_check worker:`` line), or None."""
    found = [line[line.index(WORKER_MARK) + len(WORKER_MARK):] for line in output.splitlines() if WORKER_MARK in line]
    try:
        return json.loads(found[-1]) if found else None
    except json.JSONDecodeError:
        return None


def failure(program: Program, what: str) -> str:
    """Why a program failed, in one line."""
    if program.timed_out:
        return f"{what} timed out after {program.seconds:.0f} s (log: {shown(program.log)})"
    last = [line for line in program.output.strip().splitlines() if line.strip()]
    return (f"{what} exited with {program.returncode}: {last[-1][:300] if last else 'no output'} "
            f"(log: {shown(program.log)})")


# ----------------------------------------------------------------------------------------------------------------
# Parsing what the tools print


def parse_junit(path: Path) -> dict[str, Any]:
    """pytest's junit XML -> passed/failed/errors/skipped counts, the failing tests, the commonest skip reasons."""
    root = ET.parse(path).getroot()
    counts = collections.Counter()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in ("tests", "failures", "errors", "skipped"):
            counts[key] += int(suite.get(key, 0))
    failed, skips = [], collections.Counter()
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                failed.append(f"{case.get('classname')}::{case.get('name')}")
            elif child.tag == "skipped":
                skips[(child.get("message") or "").strip()[:200]] += 1
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "failed_tests": failed[:30], "skip_reasons": dict(skips.most_common(8))}


_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b")


def parse_pytest_summary(text: str) -> dict[str, int]:
    """The counts on pytest's last summary line (``3 failed, 10 passed, 2 skipped in 4.1s``)."""
    lines = [line for line in text.splitlines() if _PYTEST_COUNT.search(line) and re.search(r" in [\d.]+s", line)]
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for number, word in _PYTEST_COUNT.findall(lines[-1] if lines else ""):
        key = "errors" if word.startswith("error") else word
        if key in counts:
            counts[key] = int(number)
    return counts


_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+errors?")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*(\d+)\s+hazards?\s+displayed\s*"
                           r"\((\d+)\s+errors?,\s*(\d+)\s+warnings?\)")
_REFUSED = re.compile(r"device not supported|not supported on this (?:platform|device)|"
                      r"(?:unable|failed) to (?:initialize|attach)|unsupported (?:device|platform)", re.I)
_NOT_ERRORS = ("COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY", "LEAK SUMMARY",
               "Target application returned")


def parse_sanitizer(text: str) -> dict[str, Any]:
    """One compute-sanitizer run's output -> its error count and where each error is.

    ``errors``: the summary's count (RACECHECK SUMMARY's errors for racecheck, ERROR SUMMARY's otherwise; None
    when the run printed neither: it did not finish). Each printed record (a ``========= `` line that is not
    indented, with the indented lines under it) is placed by its ``at <kernel>`` location: ``ours`` when the
    kernel is ours (:data:`OUR_KERNELS` in its name), ``other_kernels`` when it is another kernel (PyTorch's), and
    ``unattributed`` for the rest: errors with no kernel (API errors) and any the print limit left out.
    Racecheck's ``Warning:`` records (hazards it judges benign) are counted apart. ``refused``: the line saying
    the tool could not work on this device or platform, if any (seen under gVisor: "Device not supported").
    """
    records: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if not line.startswith("========="):
            continue
        body = line[len("========="):]
        stripped = body.lstrip(" ")
        if not stripped:
            continue
        if len(body) - len(stripped) >= 2 and records:  # indented: a detail of the record above
            records[-1][1].append(stripped.rstrip())
        else:
            records.append((stripped.rstrip(), []))
    ours = other = warnings = 0
    kernels: collections.Counter = collections.Counter()
    examples: list[str] = []
    for head, details in records:
        if head.lower().startswith("warning"):
            warnings += 1
            continue
        if re.sub(r"^error:\s*", "", head, flags=re.I).startswith(_NOT_ERRORS):
            continue
        where = head if " access at " in head else next((d for d in details if d.startswith("at ")), None)
        if where is None:
            continue  # no kernel: counted as unattributed below
        kernel = re.sub(r"^.*?\bat\s+", "", where).split("+0x")[0].split(" in /")[0][:160]
        if OUR_KERNELS in where:
            ours += 1
        else:
            other += 1
            kernels[kernel] += 1
        if len(examples) < 5:
            examples.append(f"{head} | {where}"[:400])
    race = _RACE_SUMMARY.findall(text)
    summary = _ERROR_SUMMARY.findall(text)
    errors = int(race[-1][1]) if race else (int(summary[-1]) if summary else None)
    if race:
        warnings = max(warnings, int(race[-1][2]))
    refused = [line.strip("= ").strip() for line in text.splitlines()
               if _REFUSED.search(line) and (line.startswith("=========") or "not supported" in line.lower())]
    return {"errors": errors, "ours": ours, "other_kernels": other,
            "unattributed": max(0, (errors or 0) - ours - other), "warnings": warnings,
            "other_kernel_names": dict(kernels.most_common(5)), "examples": examples,
            "refused": refused[0] if refused else None}


def sanitizer_verdict(tool: str, program: Program) -> dict[str, Any]:
    """One tool's result: ``clean``, ``errors`` (in our kernels or unattributed), ``refused``, ``incomplete``."""
    parsed = parse_sanitizer(program.output)
    finished = worker_result(program.output) is not None
    result = {"tool": tool, "seconds": round(program.seconds, 1), "returncode": program.returncode,
              "log": shown(program.log), **parsed}
    if parsed["refused"] and (not finished or "device not supported" in parsed["refused"].lower()):
        result["verdict"] = "refused"
    elif parsed["ours"] or parsed["unattributed"]:
        result["verdict"] = "errors"
    elif program.timed_out:
        result["verdict"] = "incomplete"
        result["why"] = f"timed out after {program.seconds:.0f} s"
    elif parsed["errors"] is None or not finished:
        result["verdict"] = "incomplete"
        result["why"] = ("no summary line" if parsed["errors"] is None else "the workload did not finish") + \
            f" (exit {program.returncode}): {tail(program.output, 3)}"
    else:
        result["verdict"] = "clean"
    return result


# ----------------------------------------------------------------------------------------------------------------
# The workers: programs the steps run in a fresh interpreter (and under compute-sanitizer)


def _inputs(shape, dtype, layout, device, seed):
    b, k, h, w = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    A = torch.rand(b, k, h, w, device=device, generator=gen).add_(0.01).to(dtype)  # positive, as after a ReLU
    G = torch.randn(b, k, h, w, device=device, generator=gen).to(dtype)
    if layout == "channels_last":
        A, G = A.contiguous(memory_format=torch.channels_last), G.contiguous(memory_format=torch.channels_last)
    return A, G


#: The workload's shapes: (B, K, h, w) -> (H, W).
WORKLOAD_SHAPES = (
    ((2, 33, 7, 7), (224, 224)),  # K = 32 + 1: a partial channel chunk; B > 1; 7x7 -> 224
    ((1, 512, 7, 7), (224, 224)),  # VGG19's conv5 after the last pooling
    ((3, 70, 14, 14), (30, 17)),  # three chunks, a non-square output
    ((2, 8, 1, 1), (16, 16)),  # 1x1 maps
    ((2, 5, 1, 6), (1, 20)),  # h = 1 and H = 1
    ((2, 5, 6, 1), (20, 1)),  # w = 1 and W = 1
    ((5, 2, 3, 3), (5, 7)),  # K = 2
)
WORKLOAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
WORKLOAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3, torch.float64: 1e-9}


def workload(device: torch.device, check: bool = False) -> dict[str, Any]:
    """The op on ``device`` for every method x normalize x dtype x layout (NCHW, channels-last) at the first
    shape; every method x normalize x layout in float32 at the others; two methods in the other dtypes there;
    fused_weighted_cam with and without a bias at every shape, dtype and layout; and each shape and dtype once
    into ``out=``. ``check``: each map against the reference too."""
    from ..ops import METHODS, backend, fused_gradcam, fused_weighted_cam, gradcam_reference, weighted_cam_reference

    chosen = backend()
    calls, mismatches, worst = 0, [], 0.0
    t0 = time.perf_counter()
    for index, (shape, size) in enumerate(WORKLOAD_SHAPES):
        for dtype, layout in itertools.product(WORKLOAD_DTYPES, ("contiguous", "channels_last")):
            A, G = _inputs(shape, dtype, layout, device, seed=calls)
            if index == 0 or dtype == torch.float32:
                cases = list(itertools.product(METHODS, (True, False)))
            else:
                cases = [("gradcam", True), ("layercam", False)]
            for method, normalize in cases:
                got = fused_gradcam(A, G, size, method=method, normalize=normalize)
                calls += 1
                if check:
                    ref = gradcam_reference(A, G, size, method=method, normalize=normalize)
                    scale = max(1.0, float(ref.abs().max()))
                    err = float((got - ref).abs().max()) / scale
                    worst = max(worst, err)
                    if not err <= WORKLOAD_TOLERANCE[dtype]:
                        mismatches.append(f"{method} normalize={normalize} {dtype} {layout} {shape} -> {size}: "
                                          f"{err:.2e}")
            # fused_weighted_cam: the same kernels' Weighted method, with and without a bias.
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            weights = G.to(acc).mean((2, 3)).contiguous()
            for bias in (None, -weights.sum(1) * 0.01):
                got = fused_weighted_cam(A, weights, size, bias=bias)
                calls += 1
                if check:
                    ref = weighted_cam_reference(A, weights, size, bias=bias)
                    err = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
                    worst = max(worst, err)
                    if not err <= WORKLOAD_TOLERANCE[dtype]:
                        mismatches.append(f"fused_weighted_cam bias={bias is not None} {dtype} {layout} {shape} -> "
                                          f"{size}: {err:.2e}")
            if layout == "channels_last":
                out = torch.empty(shape[0], *size, device=device, dtype=acc)
                fused_gradcam(A, G, size, method="gradcam++", out=out)
                calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"device": str(device), "backend": chosen, "calls": calls, "seconds": round(time.perf_counter() - t0, 2),
            "checked": check, "max_relative_error": worst if check else None, "mismatches": mismatches[:10]}


def _self_device_us(event) -> float:
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else event.self_cuda_time_total)  # torch < 2.4


def profile_rows(prof, device_type: str, iters: int, top: int = 15) -> list[dict[str, Any]]:
    """torch.profiler's averages as rows: each CUDA kernel (and copy) on a GPU, each operator's self CPU time on
    the CPU; calls and mean microseconds, largest total first."""
    kind = torch.autograd.DeviceType.CUDA if device_type == "cuda" else torch.autograd.DeviceType.CPU
    rows = []
    for event in prof.key_averages():
        if getattr(event, "device_type", None) != kind or not event.count:
            continue
        total = _self_device_us(event) if device_type == "cuda" else float(event.self_cpu_time_total)
        if total > 0:
            rows.append({"name": event.key[:240], "calls": event.count, "calls_per_call": event.count / iters,
                         "mean_us": total / event.count, "us_per_call": total / iters})
    rows.sort(key=lambda r: -r["us_per_call"])
    return rows[:top] + ([{"name": f"({len(rows) - top} more)", "calls": sum(r["calls"] for r in rows[top:]),
                           "us_per_call": sum(r["us_per_call"] for r in rows[top:])}] if len(rows) > top else [])


def profile(device: torch.device) -> dict[str, Any]:
    """Kernel (on the CPU: operator) times of the op and the eager reference, float32, at :data:`PROFILE_SHAPES`
    and :data:`PROFILE_BATCHES`: after warm-up calls, :data:`PROFILE_SESSIONS` profiler sessions of several calls
    each, the one with the least time kept."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ..ops import backend, fused_gradcam, gradcam_reference

    chosen = backend()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    iters = 10 if cuda else 5
    with torch_profile(activities=activities):  # the profiler's own start-up, outside the cases
        fused_gradcam(*_inputs((1, 8, 7, 7), torch.float32, "contiguous", device, seed=0), PROFILE_SIZE)
    cases = []
    for (k, h, w), batch in itertools.product(PROFILE_SHAPES, PROFILE_BATCHES[device.type]):
        A, G = _inputs((batch, k, h, w), torch.float32, "contiguous", device, seed=batch)
        case: dict[str, Any] = {"shape": [k, h, w], "batch": batch, "size": list(PROFILE_SIZE), "dtype": "fp32"}
        for name, fn in (("op", fused_gradcam), ("reference", gradcam_reference)):
            for _ in range(3):
                fn(A, G, PROFILE_SIZE)
            common._sync(device)
            sessions = []  # the least disturbed of a few sessions is kept (a busy CPU stalls some calls)
            for _ in range(PROFILE_SESSIONS):
                t0 = time.perf_counter()
                with torch_profile(activities=activities) as prof:
                    for _ in range(iters):
                        fn(A, G, PROFILE_SIZE)
                    common._sync(device)
                rows = profile_rows(prof, device.type, iters)
                sessions.append((sum(r["us_per_call"] for r in rows), (time.perf_counter() - t0) / iters, rows))
            total, wall, rows = min(sessions, key=lambda x: x[0])
            case[name] = {"us_per_call": total, "wall_us_per_call": wall * 1e6,
                          "us_per_call_each_session": [round(x[0], 1) for x in sessions],
                          "what": "kernel time" if cuda else "self CPU time of the operators", "rows": rows}
        moved = 2 * batch * k * h * w * 4 + batch * PROFILE_SIZE[0] * PROFILE_SIZE[1] * 4  # A + G + the output
        if case["op"]["us_per_call"] > 0:
            case["speedup"] = case["reference"]["us_per_call"] / case["op"]["us_per_call"]
            case["op_effective_GBps"] = moved / case["op"]["us_per_call"] / 1e3
        cases.append(case)
        del A, G
    # On a shared CPU the times swing with the load: recorded with them (load averages over 1, 5, 15 minutes).
    return {"device": str(device), "backend": chosen, "iters": iters, "sessions": PROFILE_SESSIONS,
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(), "cases": cases}


def probe(device: torch.device) -> dict[str, Any]:
    """Load the operator (as every later step will) and run it once on the CPU and on ``device``."""
    from ..ops import backend, fused, fused_gradcam, gradcam_reference

    chosen = backend()
    library = sys.modules.get("sportsnet._C")
    out = {"backend": chosen, "kernel_devices": sorted(fused._KERNEL_DEVICES), "cuda_archs": fused._CUDA_ARCHS,
           "library": library.__file__ if library is not None else sorted(getattr(torch.ops, "loaded_libraries", [])),
           "max_abs_error": {}}
    for dev in dict.fromkeys([torch.device("cpu"), device]):
        A, G = _inputs((2, 33, 7, 7), torch.float32, "contiguous", dev, seed=0)
        got, ref = fused_gradcam(A, G, (20, 20)), gradcam_reference(A, G, (20, 20))
        out["max_abs_error"][dev.type] = float((got - ref).abs().max())
    return out


# ----------------------------------------------------------------------------------------------------------------
# The steps


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
        return self.module("sportsnet.apps.gpu_check", "--worker", name, "--device", self.device.type, *args)


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the CUDA toolkit's folder."""
    home = _build.cuda_home() or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    candidates = [shutil.which("compute-sanitizer"), os.path.join(home, "bin", "compute-sanitizer"),
                  os.path.join(home, "compute-sanitizer", "compute-sanitizer")]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def _version(cmd: list[str]) -> str | None:
    """The line of ``cmd``'s output that names its version (else its last line), or None if it does not run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    named = [line for line in lines if re.search(r"version|release", line, re.I)]
    return (named or lines or [None])[-1]


def step_environment(ctx: Context, deadline: float) -> dict[str, Any]:
    env = ctx.facts["environment"] = common.environment(ctx.device)
    sanitizer = find_sanitizer()
    home = _build.cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    clip = importlib.util.find_spec("open_clip") is not None  # importing it takes seconds: installed is enough
    ctx.facts["compute_sanitizer"] = sanitizer
    details = {**{k: env[k] for k in ("device", "hardware", "torch", "cuda", "python")},
               "python_executable": ctx.python, "cuda_home": home,
               "nvcc": _version([nvcc, "--version"]) if nvcc else None,
               "compute_sanitizer": {"path": sanitizer, "version": _version([sanitizer, "--version"])}
               if sanitizer else None,
               "open_clip_installed": clip, "torch_cuda_arch_list": ctx.facts["arch_list"]}
    gpu = env["hardware"].get("gpu")
    summary = (f"{gpu['name']} ({gpu['capability']})" if gpu else f"no CUDA GPU; {env['device']}") + \
        f"; torch {env['torch']}, CUDA {env['cuda']}; compute-sanitizer " + \
        (str(details["compute_sanitizer"]["version"]) if sanitizer else "not found") + \
        f"; open_clip {'installed' if clip else 'not installed (its tests skip)'}"
    return {"status": "ran", "summary": summary, "details": details}


def step_build(ctx: Context, deadline: float) -> dict[str, Any]:
    """The library where it imports; else setup.py build_ext --inplace; else the just-in-time build. Then a probe."""
    details: dict[str, Any] = {}
    check = run_program([ctx.python, "-c", "import torch, sportsnet._C; print(sportsnet._C.__file__)"],
                        ctx.log_dir / "build_import.log", min(120.0, deadline - time.monotonic()), ctx.env)
    libraries = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sportsnet").glob("_C.*.so"))
    if check.returncode == 0:
        details["how"] = "the library was already built: kept as it is"
    elif libraries:  # never overwritten here: it may be a developer's own build
        details["import_error"] = tail(check.output, 2)
        details["how"] = (f"{', '.join(libraries)} does not import with this torch (rebuild it: make install, or "
                          f"python setup.py build_ext --inplace); the probe loads the operator's just-in-time build")
    elif not ((ROOT / "setup.py").is_file() and (ROOT / "csrc").is_dir()):
        details["how"] = "no setup.py and csrc/ here (not a source checkout): the operator's own loading decides"
    else:
        details["import_error"] = tail(check.output, 2)
        build = run_program([ctx.python, "setup.py", "build_ext", "--inplace"], ctx.log_dir / "build.log",
                            deadline - time.monotonic() - 60, ctx.env)
        details["setup_py_seconds"] = round(build.seconds, 1)
        if build.returncode == 0:
            details["how"] = (f"compiled in place by setup.py for TORCH_CUDA_ARCH_LIST="
                              f"{ctx.env.get('TORCH_CUDA_ARCH_LIST', '(its default)')}")
        else:
            details["how"] = "setup.py failed; the operator's just-in-time build is what the probe loads"
            details["setup_py_failure"] = failure(build, "setup.py build_ext --inplace")
            details["setup_py_output"] = tail(build.output)
    run = run_program(ctx.worker("probe"), ctx.log_dir / "build_probe.log", deadline - time.monotonic(),
                      ctx.program_env(SPORTSNET_REQUIRE_EXT="1"))
    result = worker_result(run.output)
    details["probe"] = result
    if run.returncode != 0 or result is None:
        return {"status": "failed", "reason": failure(run, "loading the operator under SPORTSNET_REQUIRE_EXT=1"),
                "details": {**details, "output": tail(run.output)}}
    missing = [d for d in ("cpu", ctx.device.type) if d not in result["kernel_devices"]]
    bad = {d: e for d, e in result["max_abs_error"].items() if not e < 1e-4}
    if result["backend"] != "compiled" or missing or bad:
        return {"status": "failed", "details": details,
                "reason": f"backend {result['backend']}, no kernel for {missing}" if missing or
                result["backend"] != "compiled" else f"the op differs from the reference: {bad}"}
    errors = ", ".join(f"{d} {e:.1e}" for d, e in result["max_abs_error"].items())
    library = result["library"] if isinstance(result["library"], str) else ", ".join(result["library"])
    name = Path(library).name if library else "no library"
    return {"status": "passed", "details": details,
            "summary": f"{details['how']} ({name}); the op runs on {' and '.join(result['max_abs_error'])} "
                       f"(max error vs the reference {errors})"}


def step_tests(ctx: Context, deadline: float) -> dict[str, Any]:
    cuda = ctx.device.type == "cuda"
    if ctx.tests:
        runs = {"given": (list(ctx.tests), [])}
        scope = f"the tests given: {' '.join(ctx.tests)}"
    elif cuda:
        runs = {"ops": (["tests/ops"], []), "others": (["tests/cam", "tests/engine", "tests/models"], [])}
        scope = " ".join(TEST_PATHS)
    else:
        runs = {"cuda_named": (list(TEST_PATHS), ["-k", "cuda"])}
        scope = (f"no CUDA GPU here: only the tests named for CUDA in {' '.join(TEST_PATHS)} (-k cuda; the CUDA "
                 f"ones skip); the CPU tests are CI's (minutes on a small CPU)")
    missing = [p for paths, _ in runs.values() for p in paths if not (ROOT / p).exists()]
    if missing:
        return {"status": "skipped", "reason": f"no {', '.join(missing)} here (not a source checkout)"}
    extra_env = {"SPORTSNET_REQUIRE_EXT": "1"}
    if cuda and "OMP_NUM_THREADS" not in ctx.env:  # beside the sanitizer's programs: share the cores
        extra_env["OMP_NUM_THREADS"] = str(max(1, ((os.cpu_count() or 2) - len(SANITIZER_TOOLS)) // len(runs)))

    def one(name: str) -> tuple[str, Program, Path]:
        paths, extra = runs[name]
        junit = ctx.log_dir / f"tests_{name}.xml"
        junit.unlink(missing_ok=True)
        cmd = ctx.module("pytest", "-q", "-p", "no:cacheprovider", "--durations=15", f"--junitxml={junit}", *extra,
                         *paths)
        return name, run_program(cmd, ctx.log_dir / f"tests_{name}.log", deadline - time.monotonic(),
                                 ctx.program_env(**extra_env)), junit

    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        finished = list(pool.map(one, runs))
    totals = collections.Counter()
    details: dict[str, Any] = {"scope": scope, "runs": {}}
    problems = []
    for name, program, junit in finished:
        counts = parse_junit(junit) if junit.is_file() else parse_pytest_summary(program.output)
        details["runs"][name] = {"paths": runs[name][0], "args": runs[name][1], "returncode": program.returncode,
                                 "seconds": round(program.seconds, 1), "log": shown(program.log), **counts}
        for key in ("passed", "failed", "errors", "skipped"):
            totals[key] += counts.get(key, 0)
        if program.returncode == 1 and not program.timed_out:  # pytest's "some tests failed"
            problems.append(f"{' '.join(runs[name][0])}: {counts.get('failed', 0)} failed, {counts.get('errors', 0)} "
                            f"errors: {', '.join(counts.get('failed_tests', [])[:5])}")
        elif program.returncode != 0:  # timed out, interrupted, a usage error, no tests collected (5)
            problems.append(failure(program, f"pytest {' '.join(runs[name][0])}"))
    summary = (f"{totals['passed']} passed, {totals['failed']} failed, {totals['errors']} errors, "
               f"{totals['skipped']} skipped")
    details["totals"] = dict(totals)
    if problems:
        return {"status": "failed", "summary": summary, "reason": "; ".join(problems), "details": details}
    return {"status": "passed", "summary": summary + ("" if cuda or ctx.tests else " (CUDA-named tests only)"),
            "details": details}


def step_sanitizer(ctx: Context, deadline: float) -> dict[str, Any]:
    plain = run_program(ctx.worker("workload", "--check"), ctx.log_dir / "sanitizer_workload.log",
                        min(180.0, deadline - time.monotonic()), ctx.program_env(SPORTSNET_REQUIRE_EXT="1"))
    result = worker_result(plain.output)
    details: dict[str, Any] = {"workload": result}
    if plain.returncode != 0 or result is None:
        reason = failure(plain, "the workload")
        if result and result.get("mismatches"):
            reason = f"the op differs from the reference: {'; '.join(result['mismatches'][:3])}"
        return {"status": "failed", "reason": reason, "details": {**details, "output": tail(plain.output)}}
    ran = f"the workload ran on {ctx.device.type} ({result['calls']} calls in {result['seconds']} s, each checked " \
          f"against the reference)"
    if ctx.device.type != "cuda":
        return {"status": "skipped", "details": details,
                "reason": f"no CUDA GPU here: compute-sanitizer checks CUDA kernels; {ran}"}
    sanitizer = ctx.facts.get("compute_sanitizer") or find_sanitizer()
    if sanitizer is None:
        return {"status": "skipped", "details": details,
                "reason": f"compute-sanitizer not found (PATH, CUDA_HOME/bin); {ran}"}
    # Every tensor its own cudaMalloc; no expandable segments. One CPU thread each: they run beside the tests.
    env = ctx.program_env(SPORTSNET_REQUIRE_EXT="1", PYTORCH_NO_CUDA_MEMORY_CACHING="1", OMP_NUM_THREADS="1")
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)

    def one(tool: str) -> dict[str, Any]:
        cmd = [sanitizer, "--tool", tool, *ctx.worker("workload")]
        return sanitizer_verdict(tool, run_program(cmd, ctx.log_dir / f"sanitizer_{tool}.log",
                                                   deadline - time.monotonic(), env))

    with concurrent.futures.ThreadPoolExecutor(len(SANITIZER_TOOLS)) as pool:
        tools = list(pool.map(one, SANITIZER_TOOLS))
    details["tools"] = {t["tool"]: t for t in tools}
    counts = ", ".join(f"{t['tool']} {t['ours'] + t['unattributed'] if t['errors'] is not None else '?'}"
                       for t in tools)
    others = sum(t["other_kernels"] for t in tools)
    summary = f"errors in our kernels or unattributed: {counts}" + \
        (f"; {others} in PyTorch's own kernels (not ours; see the logs)" if others else "")
    if any(t["verdict"] == "errors" for t in tools):
        bad = [t for t in tools if t["verdict"] == "errors"]
        return {"status": "failed", "summary": summary, "details": details,
                "reason": "; ".join(f"{t['tool']}: {t['ours']} in our kernels, {t['unattributed']} unattributed "
                                    f"({t['examples'][0] if t['examples'] else 'see ' + t['log']})" for t in bad)}
    refused = [t for t in tools if t["verdict"] == "refused"]
    if refused:
        return {"status": "skipped", "summary": summary, "details": details,
                "reason": f"compute-sanitizer refused this GPU ({refused[0]['refused']}), as it does under gVisor: "
                          f"run it on a machine where it works (Firecracker); {ran}"}
    incomplete = [t for t in tools if t["verdict"] == "incomplete"]
    if incomplete:
        return {"status": "failed", "summary": summary, "details": details,
                "reason": "; ".join(f"{t['tool']}: {t['why']}" for t in incomplete)}
    return {"status": "passed", "summary": summary, "details": details}


def step_profile(ctx: Context, deadline: float) -> dict[str, Any]:
    out = ctx.log_dir / "profile.json"
    out.unlink(missing_ok=True)
    run = run_program(ctx.worker("profile", "--out", str(out)), ctx.log_dir / "profile.log",
                      deadline - time.monotonic(), ctx.program_env(SPORTSNET_REQUIRE_EXT="1"))
    if run.returncode != 0 or not out.is_file():
        return {"status": "failed", "reason": failure(run, "the profile"), "details": {"output": tail(run.output)}}
    result = json.loads(out.read_text())
    empty = [f"B={c['batch']} {c['shape']}" for c in result["cases"] if not c["op"]["rows"]]
    if empty:
        return {"status": "failed", "details": result,
                "reason": f"torch.profiler recorded no {'kernels' if ctx.device.type == 'cuda' else 'operators'} "
                          f"for the op at {', '.join(empty)} (CUPTI unavailable?)"}
    unit = "kernel time" if ctx.device.type == "cuda" else "CPU time"
    parts = [f"B={c['batch']} {c['shape'][1]}x{c['shape'][2]}: op {c['op']['us_per_call'] / 1e3:.3f} ms, reference "
             f"{c['reference']['us_per_call'] / 1e3:.3f} ms ({c.get('speedup', 0):.1f}x)" for c in result["cases"]]
    load = "" if ctx.device.type == "cuda" else \
        f" (load average {result['load_average'][0]:.1f} on {result['cpu_count']} CPUs)"
    return {"status": "ran", "summary": f"{unit} per call, K=512 -> 224x224 fp32{load}: " + "; ".join(parts),
            "details": result}


def _bench_summary(name: str, payload: dict[str, Any]) -> str:
    t = payload.get("target")
    if name == "gradcam" and t:
        return (f"gradcam {t['measured_speedup']:.1f}x the eager reference, {100 * t['measured_copy_fraction']:.0f}% "
                f"of copy bandwidth (target {'met' if t['met'] else 'NOT met'})")
    if name == "explain" and t:
        return f"explain {t['measured_vs_naive']:.2f}x naive (targets {'met' if t['met'] else 'not met'})"
    if name == "train" and t:
        return f"train AMP channels-last {t['measured']:.2f}x fp32 NCHW (target {'met' if t['met'] else 'NOT met'})"
    if name == "data" and t:
        return f"data cache+batched {t['measured']:.2f}x plain (target {'met' if t['met'] else 'not met'})"
    return f"{name} ran"


def step_benchmarks(ctx: Context, deadline: float) -> dict[str, Any]:
    if ctx.device.type != "cuda":
        return {"status": "skipped", "reason": "no CUDA GPU here: the four benchmarks run with --device cuda "
                                               "(make bench runs them on a CPU)"}
    env = ctx.program_env(SPORTSNET_REQUIRE_EXT="1")
    names = {"device": common.device_name(ctx.device)}
    details: dict[str, Any] = {}
    written, parts, failed = [], [], []
    for name, args in BENCHMARKS.items():
        left = deadline - time.monotonic()
        if left < MIN_STEP_S:
            details[name] = {"status": "skipped", "reason": f"out of time ({left:.0f} s left in this step)"}
            parts.append(f"{name} not run (out of time)")
            continue
        started = time.time()
        run = run_program(ctx.module(f"sportsnet.apps.bench.{name}", *args), ctx.log_dir / f"bench_{name}.log",
                          min(BENCH_LIMITS_S[name], left), env)
        path = BENCH_RESULTS / f"{common.result_stem(name, ctx.device, names)}.json"
        entry: dict[str, Any] = {"args": args, "seconds": round(run.seconds, 1), "log": shown(run.log)}
        if run.returncode == 0 and path.is_file() and path.stat().st_mtime >= started - 1:
            payload = json.loads(path.read_text())
            written.append(path)
            parts.append(_bench_summary(name, payload))
            details[name] = {**entry, "status": "ran", "result": shown(path), "target": payload.get("target")}
        else:
            details[name] = {**entry, "status": "failed", "reason": failure(run, f"bench_{name}"),
                             "output": tail(run.output)}
            failed.append(details[name]["reason"])
    ctx.facts["bench_results"] = written
    if failed:
        return {"status": "failed", "summary": "; ".join(parts), "reason": "; ".join(failed), "details": details}
    return {"status": "ran", "summary": "; ".join(parts), "details": details}


def _pages_showing(stem: str) -> list[str]:
    """The Markdown files of the repository with a ``<!-- results: STEM -->`` block (or a value from it)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "benchmarks").glob("*.md")), *sorted((ROOT / "docs").glob("*.md"))]
    marker = re.compile(rf"<!-- results: {re.escape(stem)}(?:\.[\w+-]+)? -->")
    return [str(p.relative_to(ROOT)) for p in pages if p.is_file() and marker.search(p.read_text())]


def step_tables(ctx: Context, deadline: float) -> dict[str, Any]:
    written: list[Path] = ctx.facts.get("bench_results", [])
    mode = "--update" if written else "--check"
    run = run_program(ctx.module("sportsnet.apps.bench.tables", mode), ctx.log_dir / "tables.log",
                      deadline - time.monotonic(), ctx.env)
    lines = [line for line in run.output.splitlines()[1:] if line.strip()]
    details: dict[str, Any] = {"mode": mode, "output": lines[-20:]}
    unplaced = [p.stem for p in written if not _pages_showing(p.stem)]
    if unplaced:
        details["unplaced"] = unplaced
        details["to_place"] = ("add <!-- results: STEM --> and <!-- /results: STEM --> to the benchmark's section of "
                               "benchmarks/README.md for each, then python benchmarks/tables.py --update")
    if run.returncode != 0:
        return {"status": "failed", "details": details,
                "reason": f"tables {mode}: " + ("; ".join(lines[-3:]) if lines else failure(run, "tables"))}
    what = ("re-rendered: " + ("; ".join(lines) if lines else "nothing changed")) if written else \
        "--check: every page matches its result files (the benchmarks did not run, so nothing to re-render)"
    return {"status": "passed", "details": details,
            "summary": what + (f"; no page shows {', '.join(unplaced)} yet" if unplaced else "")}


STEP_FUNCTIONS = {"environment": step_environment, "build": step_build, "tests": step_tests,
                  "sanitizer": step_sanitizer, "profile": step_profile, "benchmarks": step_benchmarks,
                  "tables": step_tables}


def run_step(ctx: Context, name: str) -> dict[str, Any]:
    """One step under its time limit, recorded; an exception in this script fails the step, not the run."""
    left = ctx.deadline - time.monotonic()
    later = ctx.steps[ctx.steps.index(name) + 1:] if name in ctx.steps else []
    reserve = sum(RESERVE_S.get(s, 0) for s in later if not (s in TOGETHER and name in TOGETHER))
    limit = min(LIMITS_S[name], left - reserve)
    if limit < MIN_STEP_S:
        record = {"status": "skipped", "reason": f"out of time: {max(left, 0):.0f} s of the {ctx.budget:.0f} s "
                                                 f"budget left, {reserve} s of it kept for the later steps"}
    else:
        print(f"[gpu-check] {name}: started (limit {limit:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            record = STEP_FUNCTIONS[name](ctx, t0 + limit)
        except Exception as e:  # noqa: BLE001 - recorded as the step's failure; the other steps still run
            record = {"status": "failed", "reason": f"{type(e).__name__}: {e}",
                      "details": {"traceback": traceback.format_exc()[-3000:]}}
        record["seconds"] = round(time.monotonic() - t0, 1)
    record = {"name": name, "status": record.pop("status"), "seconds": record.pop("seconds", 0.0),
              "limit_s": round(max(limit, 0)), **record}
    print(f"[gpu-check] {name}: {record['status']} ({record['seconds']:.0f} s) "
          f"{record.get('summary') or record.get('reason') or ''}", flush=True)
    return record


def run_steps(ctx: Context, steps: list[str]) -> list[dict[str, Any]]:
    """The chosen steps in :data:`STEPS` order; the :data:`TOGETHER` ones side by side."""
    groups: list[list[str]] = []
    for name in (s for s in STEPS if s in steps):
        if name in TOGETHER and groups and groups[-1][0] in TOGETHER:
            groups[-1].append(name)
        else:
            groups.append([name])
    ctx.steps = [name for group in groups for name in group]
    records = {}
    for group in groups:
        pool = concurrent.futures.ThreadPoolExecutor(len(group))
        try:
            futures = [pool.submit(run_step, ctx, name) for name in group]
            for name, future in zip(group, futures):
                records[name] = future.result()
        except BaseException:  # Ctrl-C or SIGTERM: the programs first, or the threads would wait for them
            stop_all()
            raise
        finally:
            pool.shutdown(wait=True)
    return [records[s] for s in STEPS if s in records]


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


# ----------------------------------------------------------------------------------------------------------------
# The run


def choose_arch_list(device: torch.device) -> dict[str, Any]:
    """TORCH_CUDA_ARCH_LIST for every program of the run: the user's, else this GPU's compute capability (one
    architecture: a short build), else unset (no GPU: the build's own default)."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if given:
        return {"value": given, "why": "set by the user"}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"value": f"{major}.{minor}", "why": "this GPU's compute capability: one architecture keeps the build "
                                                    "short (set TORCH_CUDA_ARCH_LIST to choose others)"}
    return {"value": None, "why": "no CUDA GPU: the build's own default"}


def program_environment(arch: dict[str, Any]) -> dict[str, str]:
    """The programs' environment: the repository importable without an install, no downloads, the arch list,
    the CUDA toolkit's bin/ on PATH when nvcc is not (tests look for it there)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if arch["value"]:
        env["TORCH_CUDA_ARCH_LIST"] = arch["value"]
    home = _build.cuda_home()
    if home and not shutil.which("nvcc", path=env.get("PATH")):
        env["PATH"] = os.pathsep.join([os.path.join(home, "bin"), env.get("PATH", "")])
    if home:
        env.setdefault("CUDA_HOME", home)
    return env


def targets(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's targets for this run: the op >= 5x the eager reference and >= 60% of copy bandwidth at bench_
    gradcam's target row (VGG19 conv5_4, 512x14x14 -> 224x224, B=256, float32), and 0 compute-sanitizer errors."""
    by_name = {s["name"]: s for s in steps}
    out: dict[str, Any] = {}
    bench = by_name.get("benchmarks", {}).get("details", {}).get("gradcam", {})
    t = bench.get("target")
    if t:
        out["gradcam_speedup"] = {"target": t["speedup"], "measured": t["measured_speedup"],
                                  "met": t["measured_speedup"] >= t["speedup"]}
        out["gradcam_copy_fraction"] = {"target": t["copy_fraction"], "measured": t["measured_copy_fraction"],
                                        "met": t["measured_copy_fraction"] >= t["copy_fraction"]}
        out["gradcam_row"] = f"{t['shape']} B={t['batch']} {t['dtype']} -> 224x224"
    else:
        out["gradcam"] = {"met": None, "why": "not measured: " + (by_name.get("benchmarks", {}).get("reason")
                                                                   or "the benchmarks step did not run")}
    san = by_name.get("sanitizer")
    if san and san["status"] in ("passed", "failed") and "tools" in san.get("details", {}):
        tools = san["details"]["tools"]
        out["sanitizer"] = {"target": 0, "measured": {k: v["ours"] + v["unattributed"] for k, v in tools.items()},
                            "met": san["status"] == "passed"}
    else:
        out["sanitizer"] = {"met": None, "why": "not measured: " + ((san or {}).get("reason")
                                                                    or "the sanitizer step did not run")}
    return out


def gpu_check_table(p: dict[str, Any]) -> str:
    """The Markdown table of a gpu_check result (benchmarks/tables.py): each step, then the targets."""
    env = p["environment"]
    rows = [[s["name"], s["status"], f"{s['seconds']:.0f}", (s.get("summary") or s.get("reason") or "")
             .replace("|", "/")] for s in p["steps"]]
    lines = [f"{common.caption(env)}, torch {env['torch']}, CUDA {env['cuda']}, {env['time'][:10]}; "
             f"{p['wall_s']:.0f} s in all (budget {p['budget_s']:.0f} s): **{p['status']}**.", "",
             common.table(rows, ["step", "status", "s", "result"])]
    t = p.get("targets", {})
    if "gradcam_speedup" in t:
        lines += ["", f"Targets at {t['gradcam_row']}: >= {t['gradcam_speedup']['target']:g}x the eager reference: "
                      f"{t['gradcam_speedup']['measured']:.1f}x; >= {100 * t['gradcam_copy_fraction']['target']:.0f}% "
                      f"of copy bandwidth: {100 * t['gradcam_copy_fraction']['measured']:.0f}%."]
    if "measured" in t.get("sanitizer", {}):
        lines += ["", "compute-sanitizer errors in our kernels (or in none): " +
                  ", ".join(f"{tool} {n}" for tool, n in t["sanitizer"]["measured"].items()) + "."]
    return "\n".join(lines)


def write_outputs(payload: dict[str, Any], log_dir: Path, copy_to: Path | None, extra: list[Path]) -> Path:
    path = common.write_result(payload["stem"], payload)
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for p in [path, *extra]:
            shutil.copy2(p, copy_to / p.name)
        with tarfile.open(copy_to / "gpu_check_logs.tar.gz", "w:gz") as tar:
            tar.add(log_dir, arcname="gpu_check_logs")
    return path


def main(argv=None) -> int:
    """Parse the flags; run a worker, or the steps; returns the exit status (1 when a step failed)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default=",".join(STEPS), help="comma list of steps to run (default: all)")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help="seconds for all the steps; a step gets its own limit or what is left (default: %(default)s)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: CUDA where available (default: %(default)s)")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help=f"where gpu_check_<device>.json goes (default: {common.RESULTS}; the benchmarks always "
                         f"write there)")
    ap.add_argument("--log-dir", type=Path, default=ROOT / "outputs" / "gpu_check",
                    help="each program's output (default: %(default)s)")
    ap.add_argument("--copy-results", type=Path, default=None, metavar="DIR",
                    help="also copy this run's result files and a tar.gz of the logs into DIR")
    ap.add_argument("--tests", default="", help="comma list of test paths for the tests step instead of the "
                                                "default folders (run as given, on any device)")
    ap.add_argument("--worker", choices=("probe", "workload", "profile"), default=None,
                    help="run one step's program in this process instead: probe (load the op, run it once), "
                         "workload (what compute-sanitizer checks), profile (writes --out)")
    ap.add_argument("--check", action="store_true", help="workload: compare every map with the reference")
    ap.add_argument("--out", type=Path, default=None, help="profile: the JSON file to write")
    args = ap.parse_args(argv)
    try:
        device = common.select_devices("cuda")[0] if args.device == "cuda" else \
            torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu")
    except SystemExit as e:
        ap.error(str(e).removeprefix("error: "))
    if args.worker is not None:
        return _worker(args, device)
    steps = common.comma_list("--steps", args.steps, choices=STEPS)
    common.check_positive(budget=args.budget)
    started = time.monotonic()
    common._last_write = time.perf_counter()  # the result file's wall_s: this run's, from here
    arch = choose_arch_list(device)
    print(f"[gpu-check] {device.type}; TORCH_CUDA_ARCH_LIST={arch['value'] or '(unset)'}: {arch['why']}; "
          f"budget {args.budget:.0f} s; logs in {args.log_dir}", flush=True)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(python=sys.executable, device=device, log_dir=args.log_dir.resolve(),
                  deadline=started + args.budget, budget=args.budget, env=program_environment(arch),
                  tests=[t.strip() for t in args.tests.split(",") if t.strip()] or None, facts={"arch_list": arch})
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        records = run_steps(ctx, steps)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    env = ctx.facts.get("environment") or common.environment(device)
    status = "failed" if any(r["status"] == "failed" for r in records) else "passed"
    payload = {"benchmark": "gpu_check", "stem": common.result_stem("gpu_check", device, env), "environment": env,
               "status": status, "budget_s": args.budget, "steps_run": steps, "torch_cuda_arch_list": arch,
               "steps": records, "targets": targets(records), "argv": list(sys.argv[1:] if argv is None else argv)}
    previous, common.RESULTS = common.RESULTS, args.results_dir or common.RESULTS
    try:
        path = write_outputs(payload, ctx.log_dir, args.copy_results, ctx.facts.get("bench_results", []))
    finally:
        common.RESULTS = previous
    print("\n" + gpu_check_table(json.loads(path.read_text())), flush=True)
    print(f"\nwrote {path}", flush=True)
    return 1 if status == "failed" else 0


def _worker(args, device: torch.device) -> int:
    if args.worker == "probe":
        result = probe(device)
    elif args.worker == "workload":
        result = workload(device, check=args.check)
    else:
        if args.out is None:
            raise SystemExit("error: --worker profile needs --out FILE")
        result = profile(device)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        result = {"cases": len(result["cases"]), "out": str(args.out)}
    print(WORKER_MARK + json.dumps(result), flush=True)
    return 1 if result.get("mismatches") else 0


if __name__ == "__main__":
    raise SystemExit(main())
