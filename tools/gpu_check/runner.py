"""The steps in order, each under its time limit inside one budget, each recorded as soon as it ends."""
from __future__ import annotations

import concurrent.futures
import threading
import time
import traceback
from typing import Any, Callable

from .context import Context
from .programs import stop_all
from .steps import STEP_FUNCTIONS

#: The order: the build, then what checks it (tests and compute-sanitizer, side by side: CPU-bound programs with
#: little GPU work), then the measurements alone on a quiet GPU, then the tables.
STEPS = ("environment", "build", "tests", "sanitizer", "profile", "benchmarks", "tables")
TOGETHER = ("tests", "sanitizer")
#: A step that needs another's result: skipped, with the reason, when that one failed or was skipped in this run
#: (each would otherwise retry the build on its own).
DEPENDS = {"tests": "build", "sanitizer": "build", "profile": "build", "benchmarks": "build"}
#: Each step's time limit (seconds); the budget left caps it too.
LIMITS_S = {"environment": 60, "build": 240, "tests": 150, "sanitizer": 150, "profile": 60, "benchmarks": 180,
            "tables": 45}
#: Seconds an earlier step leaves for each later one (tests and sanitizer run together: one reserve for both).
RESERVE_S = {"tests": 100, "profile": 20, "benchmarks": 45, "tables": 15}
#: The whole run: 7 minutes, so that with the interpreter's start and the copies it fits the 8 minutes a lent GPU
#: machine gives it (docs/operator.md).
BUDGET_S = 420
MIN_STEP_S = 15  # a step that would get less time than this is skipped


def _blocked(name: str, done: dict[str, dict[str, Any]]) -> str | None:
    """Why ``name`` cannot run: the step it depends on failed or was skipped in this run (else None)."""
    needed = DEPENDS.get(name)
    record = done.get(needed) if needed else None
    if record is None or record["status"] in ("passed", "ran"):
        return None
    return f"the {needed} step {record['status']}: {record.get('reason') or record.get('summary') or ''}".strip()


def run_step(ctx: Context, name: str, done: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One step under its time limit, recorded; an exception in this script fails the step, not the run."""
    left = ctx.deadline - time.monotonic()
    later = ctx.steps[ctx.steps.index(name) + 1:] if name in ctx.steps else []
    reserve = sum(RESERVE_S.get(s, 0) for s in later if not (s in TOGETHER and name in TOGETHER))
    limit = min(LIMITS_S[name], left - reserve)
    blocked = _blocked(name, done or {})
    if blocked:
        record = {"status": "skipped", "reason": blocked[:600]}
    elif limit < MIN_STEP_S:
        record = {"status": "skipped", "reason": f"out of time: {max(left, 0):.0f} s of the {ctx.budget:.0f} s "
                                                 f"budget left, {reserve} s of it kept for the later steps"}
    else:
        print(f"[gpu-check] {name}: started (limit {limit:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            record = STEP_FUNCTIONS[name](ctx, t0 + limit)
        except Exception as e:  # noqa: BLE001 - recorded as the step's failure; the other steps still run
            record = {"status": "failed", "reason": f"{type(e).__name__}: {e}",
                      "details": {"traceback": traceback.format_exc()[-3000:]}}
        record["seconds"] = round(time.monotonic() - t0, 1)
    record = {"name": name, "status": record.pop("status"), "seconds": record.pop("seconds", 0.0),
              "limit_s": round(max(limit, 0)), **record}
    print(f"[gpu-check] {name}: {record['status']} ({record['seconds']:.0f} s) "
          f"{record.get('summary') or record.get('reason') or ''}", flush=True)
    return record


def run_steps(ctx: Context, steps: list[str],
              on_record: Callable[[list[dict[str, Any]]], None] = lambda records: None) -> list[dict[str, Any]]:
    """The chosen steps in :data:`STEPS` order, the :data:`TOGETHER` ones side by side; ``on_record`` gets the
    records so far (in order) each time a step ends, so that a run stopped from outside keeps what finished (the
    steps it stopped are recorded as ``interrupted``)."""
    groups: list[list[str]] = []
    for name in (s for s in STEPS if s in steps):
        if name in TOGETHER and groups and groups[-1][0] in TOGETHER:
            groups[-1].append(name)
        else:
            groups.append([name])
    ctx.steps = [name for group in groups for name in group]
    records: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(name: str) -> None:
        record = run_step(ctx, name, records)
        if ctx.facts.get("interrupted"):  # its programs were stopped with the run: not the step's own failure
            record.update(status="interrupted", reason=f"the run was stopped after {record['seconds']:.0f} s of this "
                                                       f"step (its log holds what it printed)")
        with lock:
            records[name] = record
            on_record([records[s] for s in STEPS if s in records])

    for group in groups:
        pool = concurrent.futures.ThreadPoolExecutor(len(group))
        try:
            for future in [pool.submit(one, name) for name in group]:
                future.result()
        except BaseException:  # Ctrl-C or SIGTERM: the programs first, or the threads would wait for them
            ctx.facts["interrupted"] = True
            stop_all()
            raise
        finally:
            pool.shutdown(wait=True)
    return [records[s] for s in STEPS if s in records]
