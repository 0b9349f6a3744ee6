"""tools.gpu_check (make gpu-check): on a CPU every step that can run does and the CUDA ones say why they were
skipped; the tests step takes the CUDA tests only; compute-sanitizer's output is attributed to our kernels or not;
the result file is written after every step; a failing step fails the run, and a failed build skips what needs it."""
import importlib.metadata
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import tables
from sportsnet.ops import _build
from tests.support import ROOT
from tools.gpu_check import cli, context, parsing, programs, runner, steps


def run(tmp_path, *args):
    """The module in a fresh interpreter from the repository root, as `make gpu-check` runs it, on the CPU."""
    out = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--device", "cpu", "--results-dir",
                          str(tmp_path / "results"), "--log-dir", str(tmp_path / "logs"), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    [path] = (tmp_path / "results").glob("gpu_check_cpu_*.json")
    return out, json.loads(path.read_text())


def test_on_a_cpu_the_cpu_steps_run_and_the_cuda_steps_say_why_not(tmp_path, capsys):
    """In this process (its programs in fresh ones); the next test runs the module itself."""
    status = cli.main(["--device", "cpu", "--steps", "environment,sanitizer,profile,benchmarks",
                             "--results-dir", str(tmp_path / "results"), "--log-dir", str(tmp_path / "logs"),
                             "--copy-results", str(tmp_path / "copied")])
    out = capsys.readouterr()
    assert status == 0, out.out[-3000:] + out.err[-3000:]
    [path] = (tmp_path / "results").glob("gpu_check_cpu_*.json")  # named by the host class, as the benchmarks
    result = json.loads(path.read_text())
    assert result["benchmark"] == "gpu_check" and result["status"] == "passed"
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == ["environment", "sanitizer", "profile", "benchmarks"]  # the checks before the measurements
    assert all(s["seconds"] >= 0 and s["limit_s"] > 0 for s in steps.values())

    env = steps["environment"]
    assert env["status"] == "ran" and env["details"]["torch"] == torch.__version__
    assert {"compute_sanitizer", "open_clip_installed", "pytest_xdist_installed", "ninja",
            "torch_cuda_arch_list"} <= set(env["details"])

    # compute-sanitizer needs CUDA; the workload it would check still runs, on the CPU, against the reference.
    sanitizer = steps["sanitizer"]
    assert sanitizer["status"] == "skipped" and "no CUDA GPU here" in sanitizer["reason"]
    workload = sanitizer["details"]["workload"]
    assert workload["device"] == "cpu" and workload["backend"] == "compiled" and workload["calls"] >= 200
    assert workload["checked"] and workload["mismatches"] == []

    profile = steps["profile"]
    assert profile["status"] == "ran"
    cases = profile["details"]["cases"]
    assert sorted((c["batch"], tuple(c["shape"])) for c in cases) == \
        sorted((b, s) for b in (1, 8) for s in ((512, 7, 7), (512, 14, 14)))
    for case in cases:
        assert any("fused_gradcam" in row["name"] for row in case["op"]["rows"]), case["op"]["rows"]
        assert case["reference"]["rows"] and case["op"]["us_per_call"] > 0 and case["speedup"] > 0
        assert all(row["calls"] > 0 for row in case["op"]["rows"])

    bench = steps["benchmarks"]
    assert bench["status"] == "skipped" and "--device cuda" in bench["reason"]
    assert result["targets"]["gradcam"]["met"] is None and result["targets"]["sanitizer"]["met"] is None

    # The human summary, and the same table for benchmarks/tables.py (which prints every result file).
    assert "**passed**" in out.out and "| profile" in out.out and "wrote " in out.out
    assert "| sanitizer   | skipped |" in tables.RENDERERS["gpu_check"](result)
    assert (tmp_path / "logs" / "profile.log").is_file() and (tmp_path / "logs" / "sanitizer_workload.log").is_file()
    # --copy-results: what a lent machine's $OUT should get back
    assert sorted(p.name for p in (tmp_path / "copied").iterdir()) == \
        sorted([f"{result['stem']}.json", "gpu_check_logs.tar.gz"])


def test_a_failing_step_fails_the_run(tmp_path):
    tests = tmp_path / "test_planted.py"
    tests.write_text("def test_that_fails():\n    assert 1 + 1 == 3\n\n\ndef test_that_passes():\n    pass\n")
    out, result = run(tmp_path, "--steps", "tests", "--tests", str(tests))
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    [step] = result["steps"]
    assert result["status"] == "failed" and step["status"] == "failed"
    assert step["details"]["totals"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    assert "test_that_fails" in step["reason"] and "**failed**" in out.stdout


def test_bad_flags_are_one_line_errors():
    with pytest.raises(SystemExit, match="--steps 'build,bogus'"):
        cli.main(["--steps", "build,bogus"])


RESIZE = ("void sportsnet::(anonymous namespace)::resize_write<float>(const T1 *, int, int, int, int, bool, "
          "const T1 *, const T1 *, T1 *)")
MEMCHECK_OUT_OF_BOUNDS = f"""========= COMPUTE-SANITIZER
========= Invalid __global__ write of size 4 bytes
=========     at {RESIZE}+0x2f0 in /repo/csrc/cuda/fused_gradcam.cu:251
=========     by thread (31,0,0) in block (7,0,0)
=========     Address 0x7f1e2c000400 is out of bounds
=========     and is 1 bytes after the nearest allocation at 0x7f1e2c000000 of size 1023 bytes
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: [0x2dfc8f] in /lib/x86_64-linux-gnu/libcuda.so.1
=========
{programs.WORKER_MARK}{{"calls": 300}}
========= ERROR SUMMARY: 1 error
"""
CLEAN = f"""========= COMPUTE-SANITIZER
{programs.WORKER_MARK}{{"calls": 300}}
========= ERROR SUMMARY: 0 errors
"""
RACECHECK_HAZARD = f"""========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at void sportsnet::(anonymous namespace)::cam_and_range<float>(\
const T1 *, int, int, int)+0x150 in /repo/csrc/cuda/fused_gradcam.cu:190
=========     and Read access at void sportsnet::(anonymous namespace)::cam_and_range<float>(const T1 *, int, int, \
int)+0x1a0 in /repo/csrc/cuda/fused_gradcam.cu:200 [8 hazards]
=========
{programs.WORKER_MARK}{{"calls": 300}}
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""
INITCHECK_IN_TORCH = f"""========= COMPUTE-SANITIZER
========= Uninitialized __global__ memory read of size 4 bytes
=========     at void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, T2, T3)+0x4a0
=========     by thread (0,0,0) in block (0,0,0)
=========
{programs.WORKER_MARK}{{"calls": 300}}
========= ERROR SUMMARY: 1 error
"""
API_ERROR = f"""========= COMPUTE-SANITIZER
========= Program hit cudaErrorInvalidValue (error 1) due to "invalid argument" on CUDA API call to cudaMemcpyAsync.
=========     Saved host backtrace up to driver entry point at error
=========         Host Frame: [0x2dfc8f] in /lib/x86_64-linux-gnu/libcuda.so.1
=========
{programs.WORKER_MARK}{{"calls": 300}}
========= ERROR SUMMARY: 1 error
"""
REFUSED = """========= COMPUTE-SANITIZER
========= Error: Device not supported. Please refer to the "Supported Devices" section of the sanitizer documentation
Traceback (most recent call last):
torch.AcceleratorError: CUDA error: unknown error
========= Error: Target application returned an error
========= ERROR SUMMARY: 1 error
"""


def verdict(text, tool="memcheck", returncode=0, timed_out=False):
    program = programs.Program(returncode, text, 12.0, timed_out, Path("/dev/null"))
    return parsing.sanitizer_verdict(tool, program)


def test_sanitizer_errors_are_attributed_to_our_kernels_or_not():
    v = verdict(MEMCHECK_OUT_OF_BOUNDS)
    assert v["verdict"] == "errors" and (v["errors"], v["ours"], v["other_kernels"], v["unattributed"]) == (1, 1, 0, 0)
    assert "Invalid __global__ write" in v["examples"][0] and "resize_write" in v["examples"][0]

    v = verdict(CLEAN)
    assert v["verdict"] == "clean" and (v["errors"], v["ours"], v["unattributed"]) == (0, 0, 0)

    v = verdict(RACECHECK_HAZARD, "racecheck")
    assert v["verdict"] == "errors" and (v["errors"], v["ours"], v["warnings"]) == (1, 1, 0)
    v = verdict(CLEAN.replace("ERROR SUMMARY: 0 errors", "RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 "
                                                          "warnings)"), "racecheck")
    assert v["verdict"] == "clean" and v["warnings"] == 2  # hazards racecheck itself judges benign

    # An error in one of PyTorch's kernels, or a CUDA call that returned an error (PyTorch's probes do), is
    # reported, not held against the op; errors the print limit left out are.
    v = verdict(INITCHECK_IN_TORCH, "initcheck")
    assert v["verdict"] == "clean" and (v["errors"], v["ours"], v["other_kernels"]) == (1, 0, 1)
    assert "vectorized_elementwise_kernel" in next(iter(v["other_kernel_names"]))
    v = verdict(API_ERROR)
    assert v["verdict"] == "clean" and (v["ours"], v["other_kernels"], v["api_errors"], v["unattributed"]) == \
        (0, 0, 1, 0)
    assert v["api_calls"] == {"cudaMemcpyAsync": 1}
    v = verdict(MEMCHECK_OUT_OF_BOUNDS.replace("ERROR SUMMARY: 1 error", "ERROR SUMMARY: 3 errors"))
    assert v["verdict"] == "errors" and (v["ours"], v["unattributed"]) == (1, 2)


def test_a_refused_device_an_unfinished_run_and_a_timeout_are_not_clean():
    v = verdict(REFUSED, returncode=1)
    assert v["verdict"] == "refused" and v["refused"].startswith("Error: Device not supported")
    v = verdict(CLEAN.replace(programs.WORKER_MARK, "Traceback: "), returncode=1)
    assert v["verdict"] == "incomplete" and "did not finish" in v["why"]
    v = verdict("========= COMPUTE-SANITIZER\n", returncode=None, timed_out=True)
    assert v["verdict"] == "incomplete" and "timed out" in v["why"]
    assert parsing.parse_sanitizer("")["errors"] is None


def test_pytest_counts_from_its_summary_line():
    text = "....\n=== 3 failed, 10 passed, 2 skipped, 1 error in 4.10s ===\n"
    assert parsing.parse_pytest_summary(text) == {"passed": 10, "failed": 3, "errors": 1, "skipped": 2}
    assert parsing.parse_pytest_summary("no summary") == {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}


def test_the_tests_step_takes_the_cuda_tests_only_before_the_benchmarks(tmp_path):
    """The selection a GPU run makes: every CUDA test of tests/ops, not the CPU sweeps nor the just-in-time loader
    (which rebuilds the whole extension); pytest-xdist workers where it is installed, beside the sanitizer's four."""
    assert runner.STEPS.index("tests") < runner.STEPS.index("benchmarks")
    ctx = context.Context(sys.executable, torch.device("cpu"), tmp_path, 0.0, 1.0, {})
    cmd = steps.test_command(ctx, *steps.CUDA_TESTS, tmp_path / "t.xml", workers=8)
    assert cmd[1:3] == ["-m", "pytest"] and cmd[cmd.index("-n") + 1] == "8" and cmd[-3:] == ["-k", "cuda", "tests/ops"]
    assert "-n" not in steps.test_command(ctx, *steps.CUDA_TESTS, tmp_path / "t.xml", workers=1)
    assert (steps.xdist_workers(16, True), steps.xdist_workers(2, True), steps.xdist_workers(16, False)) == (8, 1, 1)
    listed = subprocess.run([*cmd[:3], "--collect-only", "-q", "-p", "no:cacheprovider", *steps.CUDA_TESTS[1],
                             *steps.CUDA_TESTS[0]], cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    chosen = {line.split("[")[0] for line in listed.splitlines() if "::" in line}
    assert {"tests/ops/test_fused.py::test_cuda_matches_reference", "tests/ops/test_weighted.py::test_cuda_matches_"
            "reference", "tests/ops/test_fused_edges.py::test_cuda_graph_capture_and_replay",
            "tests/ops/test_fused.py::test_the_cuda_kernel_is_compiled_and_registered"} <= chosen
    assert not [t for t in chosen if "just_in_time" in t or "compiled_matches_reference" in t or "baseline" in t
                or "test_fused_loading" in t], chosen
    assert "tests/ops/test_fused_edges.py::test_a_batch_past_the_grid_limit[cuda]" in listed  # CUDA parameters


def test_sanitizer_tools_check_our_kernels_only_except_initcheck_and_cap_their_reports():
    worker = ["python", "-m", "tools.gpu_check.workloads", "workload", "--device", "cuda"]
    for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
        cmd = steps.sanitizer_command("/cuda/bin/compute-sanitizer", tool, worker)
        assert cmd[:3] == ["/cuda/bin/compute-sanitizer", "--tool", tool] and cmd[-len(worker):] == worker
        assert cmd[cmd.index("--print-limit") + 1] == str(steps.PRINT_LIMIT)
        assert (("--kernel-name" in cmd) == (tool != "initcheck")), cmd
        if tool != "initcheck":
            assert cmd[cmd.index("--kernel-name") + 1] == "kns=sportsnet"


def test_a_long_log_is_read_back_capped(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("start\n" + "x" * 5000 + "\nERROR SUMMARY: 0 errors\n")
    text = programs.read_capped(log, limit=1000)
    assert text.startswith("start\n") and text.endswith("ERROR SUMMARY: 0 errors\n") and len(text) < 1200
    assert "bytes of this log left out here" in text
    assert programs.read_capped(log, limit=10_000) == log.read_text()


@pytest.mark.parametrize("capability, preset, given, expected", [
    ((9, 0), None, None, "9.0"),  # a manual run on an H100: its own architecture only
    ((9, 0), "9.0a", None, "9.0a"),  # an image's preset list: kept where it runs here
    ((9, 0), "7.5 8.0 8.6 9.0 10.0 12.0+PTX", None, "9.0"),  # a long preset: only the entry for this GPU
    ((9, 0), "8.0+PTX", None, "8.0+PTX"),
    ((9, 0), "8.6;10.0", None, "9.0"),  # no entry runs here: this GPU's own
    ((9, 0), "9.0a", "8.0;9.0", "8.0;9.0"),  # --arch-list: as given
    (None, None, None, None),  # no GPU: the build's default
])
def test_a_run_builds_one_architecture_that_runs_on_this_gpu(capability, preset, given, expected):
    arch = context.choose_arch_list(capability, given, preset)
    assert arch["value"] == expected, arch
    if capability:
        assert _build.covers(capability, arch["value"])
    env = context.program_environment(arch)
    assert env.get("TORCH_CUDA_ARCH_LIST") == expected


def test_ninja_is_found_beside_the_interpreter(tmp_path, monkeypatch):
    """A machine whose python is a venv's, called by its full path: ninja is in its bin/, not on PATH."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    ninja = bin_dir / "ninja"
    ninja.write_text("#!/bin/sh\necho 1.13.0\n")
    ninja.chmod(ninja.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _build.ninja_folder() == str(bin_dir)
    env = context.program_environment({"value": None})
    assert env["PATH"].split(os.pathsep)[0] == str(bin_dir)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "elsewhere" / "python"))
    try:  # then where the ninja package's files put its program (an environment seen through a .pth file)
        files = importlib.metadata.distribution("ninja").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    packaged = [f.locate() for f in files if f.name == "ninja" and "bin" in f.parts]
    if packaged:
        assert (Path(_build.ninja_folder()) / "ninja").resolve() == Path(packaged[0]).resolve()

    def no_package(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_package)
    assert _build.ninja_folder() is None


def test_a_failed_build_skips_what_needs_it_with_the_reason(tmp_path):
    ctx = context.Context(sys.executable, torch.device("cpu"), tmp_path, time.monotonic() + 300, 300.0, {},
                          steps=list(runner.STEPS))
    failed = {"build": {"name": "build", "status": "failed", "reason": "setup.py build_ext --inplace exited with 1"}}
    for name in ("tests", "sanitizer", "profile", "benchmarks"):
        record = runner.run_step(ctx, name, failed)
        assert record["status"] == "skipped" and record["seconds"] == 0, record
        assert record["reason"] == "the build step failed: setup.py build_ext --inplace exited with 1"
    assert set(runner.DEPENDS) == {"tests", "sanitizer", "profile", "benchmarks"}  # not the tables


def test_the_result_file_is_written_after_every_step_and_kept_when_the_run_is_stopped(tmp_path):
    """A run stopped from outside (the lent machine's time limit) keeps the steps that finished, in the results
    folder and in --copy-results."""
    slow = tmp_path / "test_slow.py"
    slow.write_text("import time\n\n\ndef test_that_never_ends():\n    time.sleep(600)\n")
    copied = tmp_path / "copied"
    proc = subprocess.Popen([sys.executable, "-m", "tools.gpu_check", "--device", "cpu", "--steps",
                             "environment,tests", "--tests", str(slow), "--results-dir", str(tmp_path / "results"),
                             "--log-dir", str(tmp_path / "logs"), "--copy-results", str(copied)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(copied.glob("gpu_check_cpu_*.json")) and time.monotonic() < deadline:
            time.sleep(0.5)
        [early] = copied.glob("gpu_check_cpu_*.json")
        result = json.loads(early.read_text())
        assert result["status"] == "running" and [s["name"] for s in result["steps"]] == ["environment"]
        assert (copied / "gpu_check_logs.tar.gz").is_file()
        time.sleep(3)  # the tests step is under way
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0, out
    for folder in (tmp_path / "results", copied):
        [path] = folder.glob("gpu_check_cpu_*.json")
        result = json.loads(path.read_text())
        assert result["status"] == "interrupted" and result["wall_s"] > 0, result
        assert [(s["name"], s["status"]) for s in result["steps"]] == [("environment", "ran"), ("tests", "interrupted")]
        assert "the run was stopped" in result["steps"][1]["reason"]
