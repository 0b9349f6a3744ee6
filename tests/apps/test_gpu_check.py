"""sportsnet.apps.gpu_check (make gpu-check): on a CPU every step that can run does and the CUDA ones say why they
were skipped; compute-sanitizer's output is attributed to our kernels or not; a failing step fails the run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sportsnet.apps import gpu_check
from sportsnet.apps.bench import tables
from tests.support import ROOT


def run(tmp_path, *args):
    """The module in a fresh interpreter from the repository root, as `make gpu-check` runs it, on the CPU."""
    out = subprocess.run([sys.executable, "-m", "sportsnet.apps.gpu_check", "--device", "cpu", "--results-dir",
                          str(tmp_path / "results"), "--log-dir", str(tmp_path / "logs"), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    [path] = (tmp_path / "results").glob("gpu_check_cpu_*.json")
    return out, json.loads(path.read_text())


def test_on_a_cpu_the_cpu_steps_run_and_the_cuda_steps_say_why_not(tmp_path, capsys):
    """In this process (its programs in fresh ones); the next test runs the module itself."""
    status = gpu_check.main(["--device", "cpu", "--steps", "environment,sanitizer,profile,benchmarks",
                             "--results-dir", str(tmp_path / "results"), "--log-dir", str(tmp_path / "logs"),
                             "--copy-results", str(tmp_path / "copied")])
    out = capsys.readouterr()
    assert status == 0, out.out[-3000:] + out.err[-3000:]
    [path] = (tmp_path / "results").glob("gpu_check_cpu_*.json")  # named by the host class, as the benchmarks
    result = json.loads(path.read_text())
    assert result["benchmark"] == "gpu_check" and result["status"] == "passed"
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == ["environment", "profile", "benchmarks", "sanitizer"]  # measurements first
    assert all(s["seconds"] >= 0 and s["limit_s"] > 0 for s in steps.values())

    env = steps["environment"]
    assert env["status"] == "ran" and env["details"]["torch"] == torch.__version__
    assert {"compute_sanitizer", "open_clip_installed", "torch_cuda_arch_list"} <= set(env["details"])

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
        gpu_check.main(["--steps", "build,bogus"])


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
{gpu_check.WORKER_MARK}{{"calls": 300}}
========= ERROR SUMMARY: 1 error
"""
CLEAN = f"""========= COMPUTE-SANITIZER
{gpu_check.WORKER_MARK}{{"calls": 300}}
========= ERROR SUMMARY: 0 errors
"""
RACECHECK_HAZARD = f"""========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at void sportsnet::(anonymous namespace)::cam_and_range<float>(\
const T1 *, int, int, int)+0x150 in /repo/csrc/cuda/fused_gradcam.cu:190
=========     and Read access at void sportsnet::(anonymous namespace)::cam_and_range<float>(const T1 *, int, int, \
int)+0x1a0 in /repo/csrc/cuda/fused_gradcam.cu:200 [8 hazards]
=========
{gpu_check.WORKER_MARK}{{"calls": 300}}
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""
INITCHECK_IN_TORCH = f"""========= COMPUTE-SANITIZER
========= Uninitialized __global__ memory read of size 4 bytes
=========     at void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, T2, T3)+0x4a0
=========     by thread (0,0,0) in block (0,0,0)
=========
{gpu_check.WORKER_MARK}{{"calls": 300}}
========= ERROR SUMMARY: 1 error
"""
API_ERROR = f"""========= COMPUTE-SANITIZER
========= Program hit cudaErrorInvalidValue (error 1) due to "invalid argument" on CUDA API call to cudaMemcpyAsync.
=========     Saved host backtrace up to driver entry point at error
=========         Host Frame: [0x2dfc8f] in /lib/x86_64-linux-gnu/libcuda.so.1
=========
{gpu_check.WORKER_MARK}{{"calls": 300}}
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
    program = gpu_check.Program(returncode, text, 12.0, timed_out, Path("/dev/null"))
    return gpu_check.sanitizer_verdict(tool, program)


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

    # An error in one of PyTorch's kernels is reported, not held against the op; one in no kernel is.
    v = verdict(INITCHECK_IN_TORCH, "initcheck")
    assert v["verdict"] == "clean" and (v["errors"], v["ours"], v["other_kernels"]) == (1, 0, 1)
    assert "vectorized_elementwise_kernel" in next(iter(v["other_kernel_names"]))
    v = verdict(API_ERROR)
    assert v["verdict"] == "errors" and (v["ours"], v["other_kernels"], v["unattributed"]) == (0, 0, 1)


def test_a_refused_device_an_unfinished_run_and_a_timeout_are_not_clean():
    v = verdict(REFUSED, returncode=1)
    assert v["verdict"] == "refused" and v["refused"].startswith("Error: Device not supported")
    v = verdict(CLEAN.replace(gpu_check.WORKER_MARK, "Traceback: "), returncode=1)
    assert v["verdict"] == "incomplete" and "did not finish" in v["why"]
    v = verdict("========= COMPUTE-SANITIZER\n", returncode=None, timed_out=True)
    assert v["verdict"] == "incomplete" and "timed out" in v["why"]
    assert gpu_check.parse_sanitizer("")["errors"] is None


def test_pytest_counts_from_its_summary_line():
    text = "....\n=== 3 failed, 10 passed, 2 skipped, 1 error in 4.10s ===\n"
    assert gpu_check.parse_pytest_summary(text) == {"passed": 10, "failed": 3, "errors": 1, "skipped": 2}
    assert gpu_check.parse_pytest_summary("no summary") == {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
