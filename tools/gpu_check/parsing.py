"""Reading what the tools print: pytest's junit XML and summary line, compute-sanitizer's reports."""
from __future__ import annotations

import collections
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .programs import Program, shown, tail, worker_result

OUR_KERNELS = "sportsnet"  # our kernels' namespace: in every demangled (and mangled) name


def parse_junit(path: Path) -> dict[str, Any]:
    """pytest's junit XML -> passed/failed/errors/skipped counts, the failing tests, the commonest skip reasons."""
    root = ET.parse(path).getroot()
    counts = collections.Counter()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in ("tests", "failures", "errors", "skipped"):
            counts[key] += int(suite.get(key, 0))
    failed, skips = [], collections.Counter()
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                failed.append(f"{case.get('classname')}::{case.get('name')}")
            elif child.tag == "skipped":
                skips[(child.get("message") or "").strip()[:200]] += 1
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "failed_tests": failed[:30], "skip_reasons": dict(skips.most_common(8))}


_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b")


def parse_pytest_summary(text: str) -> dict[str, int]:
    """The counts on pytest's last summary line (``3 failed, 10 passed, 2 skipped in 4.1s``)."""
    lines = [line for line in text.splitlines() if _PYTEST_COUNT.search(line) and re.search(r" in [\d.]+s", line)]
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for number, word in _PYTEST_COUNT.findall(lines[-1] if lines else ""):
        key = "errors" if word.startswith("error") else word
        if key in counts:
            counts[key] = int(number)
    return counts


_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+errors?")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*(\d+)\s+hazards?\s+displayed\s*"
                           r"\((\d+)\s+errors?,\s*(\d+)\s+warnings?\)")
_REFUSED = re.compile(r"device not supported|not supported on this (?:platform|device)|"
                      r"(?:unable|failed) to (?:initialize|attach)|unsupported (?:device|platform)", re.I)
_NOT_ERRORS = ("COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY", "LEAK SUMMARY",
               "Target application returned")
_API_ERROR = re.compile(r"^Program hit .* on CUDA API call\b")


def parse_sanitizer(text: str) -> dict[str, Any]:
    """One compute-sanitizer run's output -> its error count and where each error is.

    ``errors``: the summary's count (RACECHECK SUMMARY's errors for racecheck, ERROR SUMMARY's otherwise; None
    when the run printed neither: it did not finish). Each printed record (a ``========= `` line that is not
    indented, with the indented lines under it) is placed by its ``at <kernel>`` location: ``ours`` when the
    kernel is ours (:data:`OUR_KERNELS` in its name), ``other_kernels`` when it is another kernel (PyTorch's);
    ``api_errors`` are the "Program hit ... on CUDA API call" records (a CUDA call that returned an error, which
    PyTorch's own probes do: no kernel ran); ``unattributed`` is the rest of the count: records the print limit
    left out. Racecheck's ``Warning:`` records (hazards it judges benign) are counted apart. ``refused``: the line
    saying the tool could not work on this device or platform, if any (seen under gVisor: "Device not supported").
    """
    records: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if not line.startswith("========="):
            continue
        body = line[len("========="):]
        stripped = body.lstrip(" ")
        if not stripped:
            continue
        if len(body) - len(stripped) >= 2 and records:  # indented: a detail of the record above
            records[-1][1].append(stripped.rstrip())
        else:
            records.append((stripped.rstrip(), []))
    ours = other = api = warnings = 0
    kernels: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    examples: list[str] = []
    for head, details in records:
        if head.lower().startswith("warning"):
            warnings += 1
            continue
        if re.sub(r"^error:\s*", "", head, flags=re.I).startswith(_NOT_ERRORS):
            continue
        if _API_ERROR.match(head):
            api += 1
            calls[head.rsplit(" to ", 1)[-1].rstrip(".")[:80]] += 1
            continue
        where = head if " access at " in head else next((d for d in details if d.startswith("at ")), None)
        if where is None:
            continue  # neither a kernel nor a CUDA call: counted as unattributed below
        kernel = re.sub(r"^.*?\bat\s+", "", where).split("+0x")[0].split(" in /")[0][:160]
        if OUR_KERNELS in where:
            ours += 1
        else:
            other += 1
            kernels[kernel] += 1
        if len(examples) < 5:
            examples.append(f"{head} | {where}"[:400])
    race = _RACE_SUMMARY.findall(text)
    summary = _ERROR_SUMMARY.findall(text)
    errors = int(race[-1][1]) if race else (int(summary[-1]) if summary else None)
    if race:
        warnings = max(warnings, int(race[-1][2]))
    refused = [line.strip("= ").strip() for line in text.splitlines()
               if _REFUSED.search(line) and (line.startswith("=========") or "not supported" in line.lower())]
    return {"errors": errors, "ours": ours, "other_kernels": other, "api_errors": api,
            "unattributed": max(0, (errors or 0) - ours - other - api), "warnings": warnings,
            "other_kernel_names": dict(kernels.most_common(5)), "api_calls": dict(calls.most_common(5)),
            "examples": examples, "refused": refused[0] if refused else None}


def sanitizer_verdict(tool: str, program: Program) -> dict[str, Any]:
    """One tool's result: ``clean``, ``errors`` (in our kernels, or left unprinted), ``refused``, ``incomplete``.
    Errors in other kernels and CUDA API errors are reported, not held against the op."""
    parsed = parse_sanitizer(program.output)
    finished = worker_result(program.output) is not None
    result = {"tool": tool, "seconds": round(program.seconds, 1), "returncode": program.returncode,
              "log": shown(program.log), **parsed}
    if parsed["refused"] and (not finished or "device not supported" in parsed["refused"].lower()):
        result["verdict"] = "refused"
    elif parsed["ours"] or parsed["unattributed"]:
        result["verdict"] = "errors"
    elif program.timed_out:
        result["verdict"] = "incomplete"
        result["why"] = f"timed out after {program.seconds:.0f} s"
    elif parsed["errors"] is None or not finished:
        result["verdict"] = "incomplete"
        result["why"] = ("no summary line" if parsed["errors"] is None else "the workload did not finish") + \
            f" (exit {program.returncode}): {tail(program.output, 3)}"
    else:
        result["verdict"] = "clean"
    return result
