"""The command line of the acceptance run (``python -m tools.gpu_check``): the flags, the run's environment, the
steps, the result file after each of them."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import check_positive, comma_list
from sportsnet.apps.config import device_from_flag
from sportsnet.results import environment, read_result, result_stem

from . import __doc__ as overview
from .context import Context, choose_arch_list, program_environment
from .programs import ROOT
from .report import gpu_check_table, run_status, targets, write_outputs
from .runner import BUDGET_S, STEPS, run_steps


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=overview,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default=",".join(STEPS), help="comma list of steps to run (default: all)")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help="seconds for all the steps; a step gets its own limit or what is left (default: %(default)s)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: CUDA where available (default: %(default)s)")
    ap.add_argument("--arch-list", default=None, metavar="LIST",
                    help="TORCH_CUDA_ARCH_LIST for the build (default: the one architecture of this GPU)")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="where gpu_check_<device>.json goes (default: benchmarks/results; the benchmarks always "
                         "write there)")
    ap.add_argument("--log-dir", type=Path, default=ROOT / "outputs" / "gpu_check",
                    help="each program's output (default: %(default)s)")
    ap.add_argument("--copy-results", type=Path, default=None, metavar="DIR",
                    help="also copy this run's result files and a tar.gz of the logs into DIR, after every step")
    ap.add_argument("--tests", default="", help="comma list of test paths for the tests step instead of the "
                                                "CUDA tests (run as given, on any device)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Run the steps; returns the exit status (1 when a step failed)."""
    args = parse_args(argv)
    steps = comma_list("--steps", args.steps, choices=STEPS)
    check_positive(budget=args.budget)
    device = device_from_flag(args.device)
    started = time.monotonic()
    capability = tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None
    arch = choose_arch_list(capability, args.arch_list, os.environ.get("TORCH_CUDA_ARCH_LIST"))
    print(f"[gpu-check] {device.type}; TORCH_CUDA_ARCH_LIST={arch['value'] or '(unset)'}: {arch['why']}; "
          f"budget {args.budget:.0f} s; logs in {args.log_dir}", flush=True)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(python=sys.executable, device=device, log_dir=args.log_dir.resolve(),
                  deadline=started + args.budget, budget=args.budget, env=program_environment(arch),
                  tests=[t.strip() for t in args.tests.split(",") if t.strip()] or None, facts={"arch_list": arch})
    env = environment(device)
    stem = result_stem("gpu_check", device, env)

    def write(records, interrupted: bool = False) -> Path:
        payload = {"benchmark": "gpu_check", "stem": stem, "environment": ctx.facts.get("environment") or env,
                   "status": run_status(records, steps, interrupted), "budget_s": args.budget, "steps_run": steps,
                   "torch_cuda_arch_list": arch, "steps": records, "targets": targets(records),
                   "argv": list(sys.argv[1:] if argv is None else argv)}
        return write_outputs(payload, time.monotonic() - started, args.results_dir, ctx.log_dir, args.copy_results,
                             ctx.facts.get("bench_results", []))

    done: list = []

    def after_step(records) -> None:
        done[:] = records
        write(records)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        records = run_steps(ctx, steps, after_step)
    except BaseException:
        write(done, interrupted=True)  # what finished, with the run marked as stopped
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    path = write(records)
    result = read_result(path)
    print("\n" + gpu_check_table(result), flush=True)
    print(f"\nwrote {path}", flush=True)
    return 1 if result["status"] == "failed" else 0

