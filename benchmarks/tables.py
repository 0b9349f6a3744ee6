"""Markdown tables from benchmarks/results/*.json (what the READMEs show), so no number is copied by hand.

    python -m benchmarks.tables                     # print every result file's table
    python -m benchmarks.tables gradcam_cpu         # one
    python -m benchmarks.tables --update            # rewrite the marked blocks of every page in PAGES
    python -m benchmarks.tables --check             # exit 1 if one is stale
    python -m benchmarks.tables --check README.md   # only this page

In a Markdown file, ``<!-- results: NAME -->`` ... ``<!-- /results: NAME -->`` marks what ``--update``
rewrites: NAME is a result file's stem (``train_cpu_avx2``: its table), ``STEM.KEY`` one number from it
(``train_cpu_avx2.best_gain``, inline), or ``make_bench_cpu_<host class>`` (the CPU benchmarks' total run
time on that class of CPU against the target). Everything outside the markers is left alone. The test suite
runs ``--check`` on every page of :data:`PAGES`.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks.bench_data import data_table
from benchmarks.bench_explain import explain_table
from benchmarks.bench_gradcam import gradcam_table
from benchmarks.bench_methods import methods_table
from benchmarks.bench_train import train_table
from sportsnet.apps.compare_backbones import backbones_table
from sportsnet.apps.explain import methods_table as explain_methods_table
from sportsnet.apps.finetune_clip import fewshot_table
from sportsnet.hardware import hardware_line
from sportsnet.results import ResultFileError, read_result, results_dir
from sportsnet.serialization import write_text
from tools.gpu_check.report import gpu_check_table

#: The repository, whose pages (PAGES) show the results.
ROOT = Path(__file__).resolve().parents[1]

#: The pages (relative to the repository) that show rendered results: what --update / --check do by default.
PAGES = ("README.md", "benchmarks/README.md", "docs/clip.md", "docs/explanations.md", "docs/operator.md",
         "docs/training.md")
RENDERERS = {"gradcam": gradcam_table, "explain": explain_table, "train_step": train_table, "data_pipeline": data_table,
             "gpu_check": gpu_check_table, "explain_methods": explain_methods_table,
             "methods": methods_table, "backbones": backbones_table,
             "fewshot": fewshot_table}
# One number from a result file, for prose: ``<!-- results: train_cpu.best_gain -->``.
FACTS = {
    "best_gain": lambda p: f"{p['best']['gain_vs_fp32_nchw_eager']:.1f}x",  # train_*
    "best": lambda p: f"{p['best']['variant']}, {p['best']['gain_vs_fp32_nchw_eager']:.1f}x fp32 NCHW",  # train_*
    "bf16_cl": lambda p: f"{_variant(p, 'bf16 channels-last eager')['gain_vs_fp32_nchw_eager']:.2f}x",  # train_*
    "gain": lambda p: f"{p['target']['measured']:.1f}x",  # data_*: cache+batched over plain
    "host": lambda p: hardware_line(p["environment"]["hardware"]),  # any result with the hardware recorded
    # gradcam_*: the target row
    "target": lambda p: (f"{p['target']['measured_speedup']:.1f}x the eager reference and "
                         f"{100 * p['target']['measured_copy_fraction']:.0f}% of copy bandwidth"),
    # explain_*: the B=16 row
    "summary": lambda p: (f"{p['target']['measured_over_floor']:.2f}x the time of a plain inference forward, "
                          f"{p['target']['measured_vs_naive']:.2f}x faster than one naive call, and top-5 maps "
                          f"{p['target']['measured_top5_vs_naive']:.1f}x faster than five naive calls"),
}


def _variant(p: dict, name: str) -> dict:
    """The result row of variant ``name`` in a train_* result."""
    return next(r for r in p["results"] if r["variant"] == name)


# `make bench` on CPU: the four benchmarks' run times (each result file's wall_s) must sum to less than this.
MAKE_BENCH = ("gradcam", "explain", "train", "data")
MAKE_BENCH_TARGET_S = 15 * 60
# A marker written in backticks (an example in prose) is not one.
MARKED = re.compile(r"(?<!`)<!-- results: (?P<name>[\w.+-]+) -->(?P<body>.*?)(?<!`)<!-- /results: (?P=name) -->", re.S)
OPENER, CLOSER = re.compile(r"(?<!`)<!-- results: "), re.compile(r"(?<!`)<!-- /results: ")


def load(stem: str) -> dict:
    """The result file ``<stem>.json`` (:func:`sportsnet.results.read_result`), or one error line naming it."""
    try:
        return read_result(stem)
    except FileNotFoundError as e:
        hint = f" (named {stem!r}); run the benchmark that writes it, see benchmarks/README.md"
        raise SystemExit(f"error: {e}{hint}") from None
    except ResultFileError as e:
        raise SystemExit(f"error: {e}") from None


def minutes(seconds: float) -> str:
    """``2 min 5 s``: ``seconds`` rounded to whole seconds first (never ``1 min 60 s``)."""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s"


def make_bench_line(host_class: str) -> str:
    """The four CPU result files of one host class (``avx2``, ``avx512_bf16``): their run times' sum."""
    runs = {stem: load(stem) for stem in (f"{b}_cpu_{host_class}" for b in MAKE_BENCH)}
    total = sum(p["wall_s"] for p in runs.values())
    parts = ", ".join(f"{stem.split('_cpu_')[0]} {p['wall_s']:.0f} s" for stem, p in runs.items())
    return (f"The four CPU benchmarks ran for {minutes(total)} in all ({parts}; each result file's `wall_s`, "
            f"interpreter start-up not included). Target (under {MAKE_BENCH_TARGET_S // 60} min): "
            f"**{'met' if total < MAKE_BENCH_TARGET_S else 'not met'}**.")


def render(name: str) -> str:
    """What a ``<!-- results: NAME -->`` block holds (see the module docstring)."""
    if name.startswith("make_bench_cpu_"):
        return make_bench_line(name.removeprefix("make_bench_cpu_"))
    stem, _, key = name.partition(".")
    payload = load(stem)
    if key:
        if key not in FACTS:
            raise SystemExit(f"error: unknown value {key!r} in {name!r}; expected one of {sorted(FACTS)}")
        return FACTS[key](payload)
    return RENDERERS[payload["benchmark"]](payload)


def sync(path: Path, check: bool = False) -> list[str]:
    """Re-render every marked block of ``path``; returns the names whose text changed. With
    ``check``, the file is not written."""
    text = path.read_text()
    blocks = list(MARKED.finditer(text))
    nested = [m["name"] for m in blocks if OPENER.search(m["body"]) or CLOSER.search(m["body"])]
    if nested or len(blocks) != len(OPENER.findall(text)) or len(blocks) != len(CLOSER.findall(text)):
        raise SystemExit(f"error: {path}: results markers do not pair up ({len(OPENER.findall(text))} openers, "
                         f"{len(CLOSER.findall(text))} closers, {len(blocks)} blocks"
                         f"{', one spans another: ' + ', '.join(nested) if nested else ''}); "
                         f"each <!-- results: NAME --> needs its own <!-- /results: NAME -->")
    stale: list[str] = []

    def fill(m: re.Match) -> str:
        name = m["name"]
        body = render(name) if "." in name else f"\n{render(name)}\n"  # a value sits inline; a table on its own lines
        if body != m["body"]:
            stale.append(name)
        return f"<!-- results: {name} -->{body}<!-- /results: {name} -->"

    new = MARKED.sub(fill, text)
    if stale and not check:
        write_text(path, new)
    return stale


def main(argv=None) -> int:
    """Print tables, or rewrite/check the marked blocks of files; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="result files to print (stems, e.g. train_cpu); default: all")
    mode = ap.add_mutually_exclusive_group()
    pages = ", ".join(PAGES)
    mode.add_argument("--update", nargs="*", type=Path, metavar="FILE",
                      help=f"rewrite the marked blocks of FILE (default: {pages})")
    mode.add_argument("--check", nargs="*", type=Path, metavar="FILE",
                      help=f"exit 1 if a marked block of FILE is stale (default: {pages})")
    args = ap.parse_args(argv)
    if args.update is not None or args.check is not None:
        status = 0
        for path in args.update or args.check or [ROOT / p for p in PAGES]:
            stale = sync(path, check=bool(args.check))
            if stale:
                print(f"{path}: {'stale' if args.check else 'updated'}: {', '.join(stale)}")
                status = 1 if args.check else status
        return status
    for name in args.names or sorted(p.stem for p in results_dir().glob("*.json")):
        print(f"### {name}\n\n{render(name)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
