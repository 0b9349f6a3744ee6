"""The steps of the acceptance run: each takes the context and its deadline and returns its record (``status``:
ran, passed, failed or skipped; ``summary`` or ``reason``; ``details``)."""
from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from sportsnet.ops import _build
from sportsnet.results import environment, read_result, result_path, result_stem

from .context import Context, built_library, find_sanitizer, version
from .parsing import OUR_KERNELS, parse_junit, parse_pytest_summary, sanitizer_verdict
from .programs import ROOT, failure, run_program, shown, tail, worker_result

#: The CUDA tests: every test of tests/ops named for CUDA (``-k cuda``: ``test_cuda_*``, ``[cuda]`` parameters,
#: test_cuda_archs.py). Not the CPU sweeps (``test_compiled_matches_reference``) nor the just-in-time loader tests,
#: which are CI's; tests/cam, tests/engine and tests/models hold no CUDA test.
CUDA_TESTS = (["tests/ops"], ["-k", "cuda"])
XDIST_MAX_WORKERS = 8
#: compute-sanitizer's tools, each with its options. memcheck, racecheck and synccheck instrument our kernels only
#: (``--kernel-name``: the others are PyTorch's, and instrumenting them all cost minutes); initcheck watches every
#: kernel, since a buffer our kernel reads is written by others. ``--print-limit`` caps each report.
KERNEL_FILTER = ["--kernel-name", f"kns={OUR_KERNELS}"]
PRINT_LIMIT = 200
SANITIZER_TOOLS = {"memcheck": KERNEL_FILTER, "racecheck": KERNEL_FILTER, "synccheck": KERNEL_FILTER,
                   "initcheck": []}
#: The benchmarks' flags here: each one's full run is longer than this check can give it. bench_gradcam keeps the
#: batches its table shows and its target (VGG19 B=256 fp32) but not the torch.compile'd reference (minutes of
#: compiling); bench_train one batch, eager only; bench_data a 1,000-image data set instead of 13,500.
BENCHMARKS = {
    "gradcam": ["--device", "cuda", "--batches", "1,64,256", "--no-compile", "--max-seconds", "5"],
    "explain": ["--device", "cuda"],
    "train": ["--device", "cuda", "--batches", "64", "--no-compile", "--reps", "5", "--max-seconds", "20"],
    "data": ["--device", "cuda", "--per-class", "10", "--images", "512", "--reps", "3", "--workers", "4",
             "--root", "data/bench/gpu_check_sports224", "--cache-dir", "data/cache/gpu_check_decoded"],
}
BENCH_LIMITS_S = {"gradcam": 70, "explain": 45, "train": 45, "data": 60}
MIN_PROGRAM_S = 15  # a benchmark that would get less time than this is not started


def step_environment(ctx: Context, deadline: float) -> dict[str, Any]:
    env = ctx.facts["environment"] = environment(ctx.device)
    sanitizer = find_sanitizer()
    home = _build.cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    clip = importlib.util.find_spec("open_clip") is not None  # importing it takes seconds: installed is enough
    xdist = importlib.util.find_spec("xdist") is not None
    ctx.facts["compute_sanitizer"] = sanitizer
    ninja = _build.ninja_folder()
    details = {**{k: env[k] for k in ("device", "hardware", "torch", "cuda", "python")},
               "python_executable": ctx.python, "cuda_home": home,
               "nvcc": version([nvcc, "--version"]) if nvcc else None,
               "ninja": os.path.join(ninja, "ninja") if ninja else None,
               "compute_sanitizer": {"path": sanitizer, "version": version([sanitizer, "--version"])}
               if sanitizer else None,
               "open_clip_installed": clip, "pytest_xdist_installed": xdist,
               "torch_cuda_arch_list": ctx.facts["arch_list"]}
    gpu = env["hardware"].get("gpu")
    summary = (f"{gpu['name']} ({gpu['capability']})" if gpu else f"no CUDA GPU; {env['device']}") + \
        f"; torch {env['torch']}, CUDA {env['cuda']}; compute-sanitizer " + \
        (str(details["compute_sanitizer"]["version"]) if sanitizer else "not found") + \
        f"; ninja {'found' if ninja else 'not found'}" + \
        f"; open_clip {'installed' if clip else 'not installed (its tests skip)'}"
    return {"status": "ran", "summary": summary, "details": details}


def step_build(ctx: Context, deadline: float) -> dict[str, Any]:
    """The library where it imports; else setup.py build_ext --inplace; else the just-in-time build. Then a probe."""
    details: dict[str, Any] = {}
    check = run_program([ctx.python, "-c", "import torch, sportsnet._C; print(sportsnet._C.__file__)"],
                        ctx.log_dir / "build_import.log", min(120.0, deadline - time.monotonic()), ctx.env)
    library = built_library()
    if check.returncode == 0:
        details["how"] = "the library was already built: kept as it is"
    elif library is not None:  # never overwritten here: it may be a developer's own build
        details["import_error"] = tail(check.output, 2)
        details["how"] = (f"{shown(library)} does not import with this torch (rebuild it: make install, or "
                          f"python setup.py build_ext --inplace); the probe loads the operator's just-in-time build")
    elif not ((ROOT / "setup.py").is_file() and (ROOT / "csrc").is_dir()):
        details["how"] = "no setup.py and csrc/ here (not a source checkout): the operator's own loading decides"
    else:
        details["import_error"] = tail(check.output, 2)
        # SPORTSNET_REQUIRE_EXT=1: a failed compile fails this step (setup.py otherwise installs without the library).
        build = run_program([ctx.python, "setup.py", "build_ext", "--inplace"], ctx.log_dir / "build.log",
                            deadline - time.monotonic() - 30, {**(ctx.env or os.environ), "SPORTSNET_REQUIRE_EXT": "1"})
        details["setup_py_seconds"] = round(build.seconds, 1)
        if build.returncode == 0:
            details["how"] = (f"compiled in place by setup.py for TORCH_CUDA_ARCH_LIST="
                              f"{ctx.env.get('TORCH_CUDA_ARCH_LIST', '(its default)')}")
        else:
            details["setup_py_failure"] = failure(build, "setup.py build_ext --inplace")
            details["setup_py_output"] = tail(build.output)
            return {"status": "failed", "details": details, "reason": details["setup_py_failure"]}
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
    loaded = result["library"] if isinstance(result["library"], str) else ", ".join(result["library"])
    name = Path(loaded).name if loaded else "no library"
    return {"status": "passed", "details": details,
            "summary": f"{details['how']} ({name}); the op runs on {' and '.join(result['max_abs_error'])} "
                       f"(max error vs the reference {errors})"}


def test_command(ctx: Context, paths: list[str], selection: list[str], junit: Path, workers: int) -> list[str]:
    """pytest on ``paths`` with ``selection``, its junit XML into ``junit``; ``-n workers`` where above 1."""
    return ctx.module("pytest", "-q", "-p", "no:cacheprovider", "--durations=15", f"--junitxml={junit}",
                      *(["-n", str(workers)] if workers > 1 else []), *selection, *paths)


def xdist_workers(cpus: int | None, installed: bool) -> int:
    """pytest-xdist workers for the tests step, beside the sanitizer's programs (one core each): 1 without it."""
    if not installed:
        return 1
    return max(1, min(XDIST_MAX_WORKERS, (cpus or 1) - len(SANITIZER_TOOLS)))


def step_tests(ctx: Context, deadline: float) -> dict[str, Any]:
    if ctx.tests:
        paths, selection, scope = list(ctx.tests), [], f"the tests given: {' '.join(ctx.tests)}"
    else:
        paths, selection = CUDA_TESTS
        scope = f"the CUDA tests: {' '.join(selection)} {' '.join(paths)}" + \
            ("" if ctx.device.type == "cuda" else " (no CUDA GPU here: they skip)")
    missing = [p for p in paths if not (ROOT / p).exists()]
    if missing:
        return {"status": "skipped", "reason": f"no {', '.join(missing)} here (not a source checkout)"}
    workers = xdist_workers(os.cpu_count(), importlib.util.find_spec("xdist") is not None)
    extra_env = {"SPORTSNET_REQUIRE_EXT": "1"}
    if "OMP_NUM_THREADS" not in ctx.env:  # beside the sanitizer's programs: share the cores
        extra_env["OMP_NUM_THREADS"] = str(max(1, ((os.cpu_count() or 2) - len(SANITIZER_TOOLS)) // workers))
    junit = ctx.log_dir / "tests.xml"
    junit.unlink(missing_ok=True)
    program = run_program(test_command(ctx, paths, selection, junit, workers), ctx.log_dir / "tests.log",
                          deadline - time.monotonic(), ctx.program_env(**extra_env))
    counts = parse_junit(junit) if junit.is_file() else parse_pytest_summary(program.output)
    details: dict[str, Any] = {"scope": scope, "paths": paths, "args": selection, "xdist_workers": workers,
                               "returncode": program.returncode, "seconds": round(program.seconds, 1),
                               "log": shown(program.log), **counts,
                               "totals": {k: counts[k] for k in ("passed", "failed", "errors", "skipped")}}
    summary = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
               f"{counts['skipped']} skipped" + (f" in {workers} processes" if workers > 1 else ""))
    if program.returncode == 1 and not program.timed_out:  # pytest's "some tests failed"
        reason = (f"{counts.get('failed', 0)} failed, {counts.get('errors', 0)} errors: "
                  f"{', '.join(counts.get('failed_tests', [])[:5])}")
        return {"status": "failed", "summary": summary, "reason": reason, "details": details}
    if program.returncode != 0:  # timed out, interrupted, a usage error, no tests collected (5)
        return {"status": "failed", "summary": summary, "reason": failure(program, "pytest"), "details": details}
    return {"status": "passed", "summary": summary, "details": details}


def sanitizer_command(sanitizer: str, tool: str, worker: list[str]) -> list[str]:
    return [sanitizer, "--tool", tool, *SANITIZER_TOOLS[tool], "--print-limit", str(PRINT_LIMIT), *worker]


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
        return sanitizer_verdict(tool, run_program(sanitizer_command(sanitizer, tool, ctx.worker("workload")),
                                                   ctx.log_dir / f"sanitizer_{tool}.log",
                                                   deadline - time.monotonic(), env))

    with concurrent.futures.ThreadPoolExecutor(len(SANITIZER_TOOLS)) as pool:
        tools = list(pool.map(one, SANITIZER_TOOLS))
    details["tools"] = {t["tool"]: t for t in tools}
    counts = ", ".join(f"{t['tool']} {t['ours'] + t['unattributed'] if t['errors'] is not None else '?'}"
                       for t in tools)
    others, api = sum(t["other_kernels"] for t in tools), sum(t["api_errors"] for t in tools)
    summary = f"errors in our kernels (or left unprinted): {counts}" + \
        (f"; {others} in PyTorch's own kernels (not ours; see the logs)" if others else "") + \
        (f"; {api} CUDA API calls that returned an error (no kernel; see the logs)" if api else "")
    bad = [t for t in tools if t["verdict"] == "errors"]
    if bad:
        return {"status": "failed", "summary": summary, "details": details,
                "reason": "; ".join(f"{t['tool']}: {t['ours']} in our kernels, {t['unattributed']} left unprinted "
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
    gpu = ctx.facts.get("environment") or environment(ctx.device)
    details: dict[str, Any] = {}
    written = ctx.facts.setdefault("bench_results", [])  # read after each step: what finished is kept
    parts, failed = [], []
    for name, args in BENCHMARKS.items():
        left = deadline - time.monotonic()
        if left < MIN_PROGRAM_S:
            details[name] = {"status": "skipped", "reason": f"out of time ({left:.0f} s left in this step)"}
            parts.append(f"{name} not run (out of time)")
            continue
        started = time.time()
        run = run_program(ctx.module(f"benchmarks.bench_{name}", *args), ctx.log_dir / f"bench_{name}.log",
                          min(BENCH_LIMITS_S[name], left), env)
        path = result_path(result_stem(name, ctx.device, gpu))
        entry: dict[str, Any] = {"args": args, "seconds": round(run.seconds, 1), "log": shown(run.log)}
        if run.returncode == 0 and path.is_file() and path.stat().st_mtime >= started - 1:
            payload = read_result(path)
            written.append(path)
            parts.append(_bench_summary(name, payload))
            details[name] = {**entry, "status": "ran", "result": shown(path), "target": payload.get("target")}
        else:
            details[name] = {**entry, "status": "failed", "reason": failure(run, f"bench_{name}"),
                             "output": tail(run.output)}
            failed.append(details[name]["reason"])
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
    run = run_program(ctx.module("benchmarks.tables", mode), ctx.log_dir / "tables.log",
                      deadline - time.monotonic(), ctx.env)
    lines = [line for line in run.output.splitlines()[1:] if line.strip()]
    details: dict[str, Any] = {"mode": mode, "output": lines[-20:]}
    unplaced = [p.stem for p in written if not _pages_showing(p.stem)]
    if unplaced:
        details["unplaced"] = unplaced
        details["to_place"] = ("add <!-- results: STEM --> and <!-- /results: STEM --> to the benchmark's section of "
                               "benchmarks/README.md for each, then python -m benchmarks.tables --update")
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
