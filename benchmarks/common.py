"""Shared by the benchmarks: device and list flags, interleaved timing, copy bandwidth, cache sizing. What
describes and writes a result (environment, file names, tables, JSON) is the library's :mod:`sportsnet.results`.

Timing rules (see each benchmark's docstring for what it measures):
- variants of one comparison run interleaved in the same process (rep 1 of every variant, then rep 2,
  ...), so a machine that gets busier or quieter affects them alike;
- warm-up calls first (allocation, just-in-time compilation, caches);
- CUDA work is timed with CUDA events around each call; CPU work with a monotonic clock;
- medians are reported with the spread (25th-75th percentile);
- inputs rotate among several copies when one copy would sit in the last-level cache.
"""
from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any, Callable, Sequence

import torch

from sportsnet.apps.config import device_from_flag


def last_level_cache_bytes(device: torch.device) -> int:
    """The GPU's L2 or the CPU's L3 size in bytes (64 MiB where it cannot be read)."""
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
    """``--device`` of the benchmarks: ``cpu`` or ``cuda`` (parsed by the programs' one device flag,
    :func:`sportsnet.apps.config.device_from_flag`: one error line without CUDA), or ``all`` (the CPU, and CUDA
    where present)."""
    if choice == "all":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [device_from_flag(choice)]


def comma_list(flag: str, text: str, *, choices: Sequence[str] | None = None, positive_int: bool = False) -> list:
    """A comma-separated flag value as a list, or one error line naming the bad value and what is accepted."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if positive_int:
        bad = [t for t in items if not (t.isdigit() and int(t) > 0)]
        if bad or not items:
            raise SystemExit(f"error: {flag} {text!r}: expected positive integers separated by commas (e.g. 16,64)")
        return [int(t) for t in items]
    bad = [t for t in items if choices is not None and t not in choices]
    if bad or not items:
        raise SystemExit(f"error: {flag} {text!r}: {', '.join(map(repr, bad)) or 'empty'} is not accepted; expected "
                         f"a comma list of {', '.join(choices or ())}")
    return items


def check_positive(**values: float) -> None:
    """One error line for any flag (given by its dest name) that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} {value}: must be > 0")


def sync(device: torch.device) -> None:
    """Wait for the queued CUDA work (nothing on the CPU)."""
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
    sync(device)
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
    """Median and 25th/75th percentiles (seconds) of ``samples``, and their count."""
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median_s": statistics.median(samples), "p25_s": q[0], "p75_s": q[2], "reps": len(samples)}


def copy_bandwidth(device: torch.device, nbytes: int | None = None, reps: int = 10) -> float:
    """Bytes read + written per second by a large tensor copy (``dst.copy_(src)``)."""
    nbytes = nbytes or max(256 << 20, 8 * last_level_cache_bytes(device))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = time_interleaved({"copy": lambda i: dst.copy_(src)}, device, reps)["copy"]
    return 2 * src.nbytes / statistics.median(times)
