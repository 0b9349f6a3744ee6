"""Shared by the benchmark scripts: environment description, interleaved timing, copy bandwidth, JSON.

Timing rules (see each script's docstring for what it measures):
- variants of one comparison run interleaved in the same process (rep 1 of every variant, then rep 2,
  ...), so a machine that gets busier or quieter affects them alike;
- warm-up calls first (allocation, just-in-time compilation, caches);
- CUDA work is timed with CUDA events around each call; CPU work with a monotonic clock;
- medians are reported with the spread (25th-75th percentile);
- inputs rotate among several copies when one copy would sit in the last-level cache.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# Wall-clock bookkeeping for ``write_json``: each result file records how long its part of the run took.
_last_write = time.perf_counter()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    try:
        out = subprocess.run(["getconf", "LEVEL3_CACHE_SIZE"], capture_output=True, text=True, timeout=5).stdout
        if int(out.strip() or 0) > 0:
            return int(out.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return 64 << 20


def copies_to_defeat_cache(bytes_per_copy: int, device: torch.device, limit: int = 16) -> int:
    """How many input copies to rotate through (one per call) so no call finds its inputs in the
    last-level cache: together they span twice its size, and never fewer than two."""
    return max(2, min(limit, -(-2 * last_level_cache_bytes(device) // max(bytes_per_copy, 1))))


def select_devices(choice: str) -> list[torch.device]:
    """``--device`` of the benchmark scripts: ``cpu``, ``cuda`` (an error without CUDA) or ``all``
    (the CPU, and CUDA where present)."""
    devices = [torch.device("cpu")] if choice in ("all", "cpu") else []
    if choice in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif choice == "cuda":
            raise SystemExit("error: --device cuda but CUDA is not available")
    return devices


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(variants: dict[str, Callable[[int], Any]], device: torch.device, reps: int, warmup: int = 2,
                     max_seconds: float | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, repeated ``reps`` times in interleaved order.

    Each call gets a running call number, so a variant that rotates its inputs with it never reads
    what the call just before it read (whatever variant that was): every call starts as cold as the
    others. ``max_seconds`` stops early (after at least 3 repetitions) once the comparison ran that long.
    """
    calls = 0
    for _ in range(warmup):
        for f in variants.values():
            f(calls)
            calls += 1
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    start = time.perf_counter()
    for r in range(reps):
        for name, f in variants.items():
            if device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                f(calls)
                end.record()
                end.synchronize()
                times[name].append(begin.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                f(calls)
                times[name].append(time.perf_counter() - t0)
            calls += 1
        if max_seconds is not None and r >= 2 and time.perf_counter() - start > max_seconds:
            break
    return times


def summary(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median_s": statistics.median(samples), "p25_s": q[0], "p75_s": q[2], "reps": len(samples)}


def copy_bandwidth(device: torch.device, nbytes: int | None = None, reps: int = 10) -> float:
    """Bytes read + written per second by a large tensor copy (``dst.copy_(src)``)."""
    nbytes = nbytes or max(256 << 20, 8 * last_level_cache_bytes(device))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = time_interleaved({"copy": lambda i: dst.copy_(src)}, device, reps)["copy"]
    return 2 * src.nbytes / statistics.median(times)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` atomically. ``wall_s`` is added: the seconds since this module
    was imported or since the previous result was written, whichever is later, i.e. the benchmark's
    own run time for that device, its setup included (``make bench``'s time budget is their sum)."""
    global _last_write
    now = time.perf_counter()
    payload = {**payload, "wall_s": now - _last_write}
    _last_write = now
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])
