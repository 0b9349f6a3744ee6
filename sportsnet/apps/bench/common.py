"""Shared by the benchmarks: environment description, interleaved timing, copy bandwidth, JSON.

Timing rules (see each script's docstring for what it measures):
- variants of one comparison run interleaved in the same process (rep 1 of every variant, then rep 2,
  ...), so a machine that gets busier or quieter affects them alike;
- warm-up calls first (allocation, just-in-time compilation, caches);
- CUDA work is timed with CUDA events around each call; CPU work with a monotonic clock;
- medians are reported with the spread (25th-75th percentile);
- inputs rotate among several copies when one copy would sit in the last-level cache.
"""
from __future__ import annotations

import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...hardware import choose_channels_last, choose_precision, describe, hardware_line, probe_cpu
from ...serialization import write_json


def _results_dir() -> Path:
    """The repository's ``benchmarks/results`` (the package is installed editable, so it sits three folders
    above this file); where that has no ``benchmarks/`` folder, ``benchmarks/results`` under the working
    directory."""
    benchmarks = Path(__file__).resolve().parents[3] / "benchmarks"
    return (benchmarks if benchmarks.is_dir() else Path.cwd() / "benchmarks") / "results"


# Where result files are written and read (tests point it elsewhere).
RESULTS = _results_dir()
# Wall-clock bookkeeping for ``write_result``: each result file records how long its part of the run took.
_last_write = time.perf_counter()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and the number of torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{probe_cpu().model} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a result: the device, the hardware (CPU model, ISA level, native bf16; GPU name and
    compute capability: :func:`sportsnet.hardware.describe`), what ``auto`` picks there, and versions."""
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "hardware": describe(device),
        "auto": {"precision": str(choose_precision("auto", device)),
                 "channels_last": str(choose_channels_last(None, device))},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": probe_cpu().model,
        "cpu_threads": torch.get_num_threads(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def host_class(env: dict[str, Any]) -> str:
    """``avx2``, ``avx512_bf16``, ...: the CPU's ISA level and whether it has native bf16, the two things
    that decide which precision and layout win on a CPU (result files of each class are kept apart)."""
    cpu = env["hardware"]["cpu"]
    return slug(f"{cpu['isa']}{'_bf16' if cpu['native_bf16'] else ''}")


def result_stem(benchmark: str, device: torch.device, env: dict[str, Any]) -> str:
    """``train_cpu_avx2``, ``train_nvidia_h100_80gb_hbm3``: result files named by what produced them."""
    return f"{benchmark}_{'cpu_' + host_class(env) if device.type == 'cpu' else slug(env['device'])}"


def caption(env: dict[str, Any]) -> str:
    """The hardware line a table starts with."""
    if "hardware" not in env:  # results from before the hardware was recorded
        return f"`{env['device']}` (ISA level and native bf16 not recorded)"
    return f"`{hardware_line(env['hardware'])}`"


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
    """``--device`` of the benchmark scripts: ``cpu``, ``cuda`` (an error without CUDA) or ``all``
    (the CPU, and CUDA where present)."""
    devices = [torch.device("cpu")] if choice in ("all", "cpu") else []
    if choice in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif choice == "cuda":
            raise SystemExit("error: --device cuda but CUDA is not available")
    return devices


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


def _sync(device: torch.device) -> None:
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


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``RESULTS/<name>.json`` atomically. ``wall_s`` is added: the seconds since this module
    was imported or since the previous result was written, whichever is later, i.e. the benchmark's
    own run time for that device, its setup included (``make bench``'s time budget is their sum)."""
    global _last_write
    now = time.perf_counter()
    payload = {**payload, "wall_s": now - _last_write}
    _last_write = now
    RESULTS.mkdir(parents=True, exist_ok=True)
    return write_json(RESULTS / f"{name}.json", payload)


def slug(text: str) -> str:
    """``text`` in lower case, each character but letters and digits as ``_``, no ``_`` at either end."""
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def table(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(r: list) -> str:
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"

    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])
