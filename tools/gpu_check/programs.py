"""Running the programs of the acceptance run: each in the repository root, in its own process group (stopped
whole at its time limit or when the run is interrupted), its output in a log file, read back capped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The repository (a source checkout: setup.py, csrc/, tests/, benchmarks/ beside the package).
ROOT = Path(__file__).resolve().parents[2]
WORKER_MARK = "gpu_check worker: "  # the line a worker prints its JSON result on
#: The most of a log read back (its head and its tail, half each): a program that prints without end (a
#: sanitizer reporting every access) cannot fill this process's memory.
MAX_OUTPUT_CHARS = 2_000_000


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


def read_capped(path: Path, limit: int = MAX_OUTPUT_CHARS) -> str:
    """``path``'s text; past ``limit`` characters, its first and last halves with a line saying what was left out."""
    size = path.stat().st_size
    if size <= limit:
        return path.read_text(errors="replace")
    with open(path, "rb") as f:
        head = f.read(limit // 2).decode(errors="replace")
        f.seek(size - limit // 2)
        rest = f.read().decode(errors="replace")
    return f"{head}\n[gpu_check: {size - limit} bytes of this log left out here]\n{rest}"


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
    return Program(proc.returncode, read_capped(log), time.monotonic() - t0, timed_out, log)


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
