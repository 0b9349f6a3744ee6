"""The acceptance run's result file (a :mod:`sportsnet.results` file, ``benchmark: gpu_check``), written after every
step, copied where asked; its targets and its Markdown table."""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from sportsnet.results import caption, table, write_result
from sportsnet.serialization import atomic_path


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


def run_status(records: list[dict[str, Any]], chosen: list[str], interrupted: bool = False) -> str:
    """``failed`` when a step failed; else ``interrupted`` (stopped from outside); else ``running`` while chosen
    steps have no record (the file is written after each step); else ``passed``."""
    if any(r["status"] == "failed" for r in records):
        return "failed"
    if interrupted or any(r["status"] == "interrupted" for r in records):
        return "interrupted"
    return "running" if len(records) < len(chosen) else "passed"


def gpu_check_table(p: dict[str, Any]) -> str:
    """The Markdown table of a gpu_check result (benchmarks/tables.py): each step, then the targets."""
    env = p["environment"]
    rows = [[s["name"], s["status"], f"{s['seconds']:.0f}", (s.get("summary") or s.get("reason") or "")
             .replace("|", "/")] for s in p["steps"]]
    lines = [f"{caption(env)}, torch {env['torch']}, CUDA {env['cuda']}, {env['time'][:10]}; "
             f"{p['wall_s']:.0f} s in all (budget {p['budget_s']:.0f} s): **{p['status']}**.", "",
             table(rows, ["step", "status", "s", "result"])]
    t = p.get("targets", {})
    if "gradcam_speedup" in t:
        lines += ["", f"Targets at {t['gradcam_row']}: >= {t['gradcam_speedup']['target']:g}x the eager reference: "
                      f"{t['gradcam_speedup']['measured']:.1f}x; >= {100 * t['gradcam_copy_fraction']['target']:.0f}% "
                      f"of copy bandwidth: {100 * t['gradcam_copy_fraction']['measured']:.0f}%."]
    if "measured" in t.get("sanitizer", {}):
        lines += ["", "compute-sanitizer errors in our kernels (or left unprinted): " +
                  ", ".join(f"{tool} {n}" for tool, n in t["sanitizer"]["measured"].items()) + "."]
    return "\n".join(lines)


def write_outputs(payload: dict[str, Any], wall_s: float, folder: Path | None, log_dir: Path, copy_to: Path | None,
                  extra: list[Path]) -> Path:
    """The result file (in ``folder``, default the results folder); with ``copy_to``, it, the ``extra`` files (the
    benchmarks' results) and a tar.gz of the logs copied there too. Each file is replaced whole, so a run stopped
    while writing leaves the previous copy."""
    path = write_result(payload["stem"], payload, folder=folder, wall_s=wall_s)
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for p in [path, *extra]:
            with atomic_path(copy_to / p.name, sync=False) as tmp:
                shutil.copy2(p, tmp)
        with atomic_path(copy_to / "gpu_check_logs.tar.gz", sync=False) as tmp:
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(log_dir, arcname="gpu_check_logs")
    return path
