"""Result files: what produced a number, and the one JSON file that records it.

Every program that publishes numbers (the benchmarks, ``explain.py --results``, ``compare_backbones.py``, the GPU
acceptance run) writes one file with :func:`write_result` into the results folder (:func:`results_dir`: the
repository's ``benchmarks/results``), and everything that reads one (the pages' tables, the acceptance run) goes
through :func:`read_result`. The schema, the keys every result file has (:data:`REQUIRED_KEYS`):

- ``benchmark``: what kind of result it is, which names the table that renders it (``gradcam``, ``train_step``,
  ``explain_methods``, ``backbones``, ``gpu_check``, ...);
- ``environment``: :func:`environment`, the machine and versions that produced it (:data:`ENVIRONMENT_KEYS`);
- ``wall_s``: the seconds its run took (see :func:`write_result`).

Everything else is the benchmark's own. Files are named by what produced them (:func:`result_stem`).
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .hardware import choose_channels_last, choose_precision, describe, hardware_line, probe_cpu
from .serialization import write_json

__all__ = [
    "ENVIRONMENT_KEYS", "REQUIRED_KEYS", "ResultFileError", "caption", "device_name", "environment", "host_class",
    "read_result", "result_path", "result_stem", "results_dir", "slug", "table", "use_results_dir", "write_result",
]

#: The keys every result file has.
REQUIRED_KEYS = ("benchmark", "environment", "wall_s")
#: The keys every ``environment`` has (:func:`environment` also records the CPU, threads, host and git commit).
ENVIRONMENT_KEYS = ("device", "device_type", "hardware", "torch", "cuda", "python", "time")


class ResultFileError(ValueError):
    """A file in the results folder that is not a result file (not JSON, or a key of the schema missing)."""


def _default_results_dir() -> Path:
    """The repository's ``benchmarks/results`` (the package is installed editable, or run from the checkout);
    where there is no ``benchmarks/`` beside the package, ``benchmarks/results`` under the working directory."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    return (benchmarks if benchmarks.is_dir() else Path.cwd() / "benchmarks") / "results"


_folder: Path | None = None  # set by use_results_dir only
_last_write = time.perf_counter()  # for write_result's wall_s


def results_dir() -> Path:
    """Where results are written and read: ``benchmarks/results``, or the folder of :func:`use_results_dir`."""
    return _folder if _folder is not None else _default_results_dir()


@contextmanager
def use_results_dir(folder: str | Path) -> Iterator[Path]:
    """Results go to (and are read from) ``folder`` inside the ``with`` block (tests, scratch runs)."""
    global _folder
    previous, _folder = _folder, Path(folder)
    try:
        yield _folder
    finally:
        _folder = previous


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


def slug(text: str) -> str:
    """``text`` in lower case, each character but letters and digits as ``_``, no ``_`` at either end."""
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


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


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(r: list) -> str:
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"

    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def result_path(name: str, folder: str | Path | None = None) -> Path:
    """``<folder>/<name>.json`` (``folder``: :func:`results_dir` by default)."""
    return Path(folder if folder is not None else results_dir()) / f"{name}.json"


def write_result(name: str, payload: dict[str, Any], *, folder: str | Path | None = None,
                 wall_s: float | None = None) -> Path:
    """Write ``payload`` as the result file ``name`` (atomically) and return its path.

    ``payload`` needs ``benchmark`` and ``environment``; ``wall_s`` is added: as given, else the seconds since
    this module was imported or since the previous result was written, whichever is later, i.e. the benchmark's
    own run time for that device, its setup included (``make bench``'s time budget is their sum)."""
    global _last_write
    missing = [k for k in REQUIRED_KEYS if k != "wall_s" and k not in payload]
    if missing:
        raise ValueError(f"result {name!r} has no {', '.join(missing)} (every result file has {REQUIRED_KEYS})")
    now = time.perf_counter()
    payload = {**payload, "wall_s": now - _last_write if wall_s is None else wall_s}
    _last_write = now
    path = result_path(name, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, payload)


def read_result(name_or_path: str | Path, folder: str | Path | None = None) -> dict[str, Any]:
    """A result file, by stem (in ``folder``, default :func:`results_dir`) or by path (a ``.json`` name).

    :class:`FileNotFoundError` when there is none; :class:`ResultFileError` when it is not JSON or lacks a key of
    :data:`REQUIRED_KEYS` (or of :data:`ENVIRONMENT_KEYS` in its environment); each names the file."""
    text = str(name_or_path)
    path = Path(text) if text.endswith(".json") else result_path(text, folder)
    if not path.is_file():
        raise FileNotFoundError(f"no result file {path}")
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{path} is not a result file: not JSON ({e})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
    env = payload.get("environment") if isinstance(payload, dict) else None
    missing += [f"environment.{k}" for k in ENVIRONMENT_KEYS if isinstance(env, dict) and k not in env]
    if missing:
        raise ResultFileError(f"{path} is not a result file: no {', '.join(missing)} (every result file has "
                              f"{', '.join(REQUIRED_KEYS)}: see sportsnet/results.py)")
    return payload
