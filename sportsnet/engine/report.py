"""Evaluation reports: confusion-matrix and per-class-accuracy figures, JSON + Markdown + PNG files.

Figures are drawn with ``matplotlib.figure.Figure`` and rendered by :mod:`sportsnet.plotting` (no
pyplot), so a user's interactive backend is never touched and nothing needs a display.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..plotting import save_figure
from ..serialization import write_json, write_text
from .loop import EvalResult


def confusion_figure(confusion: torch.Tensor, classes: Sequence[str], title: str = "confusion matrix") -> Figure:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    cm = confusion.double()
    cm = (cm / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
    n = len(classes)
    side = min(24.0, max(5.0, 0.22 * n + 3))
    fig = Figure(figsize=(side, side), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 100:
        fs = max(3, min(9, 300 // max(n, 1)))
        ax.set_xticks(range(n), labels=classes, rotation=90, fontsize=fs)
        ax.set_yticks(range(n), labels=classes, fontsize=fs)
    if n <= 20:
        for t in range(n):
            for p in range(n):
                if cm[t, p] > 0:
                    ax.text(p, t, f"{cm[t, p]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if cm[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def per_class_figure(accuracy: torch.Tensor, classes: Sequence[str], title: str = "per-class accuracy") -> Figure:
    """Horizontal bars, one per class, in class order (NaN for classes without images is drawn empty)."""
    n = len(classes)
    fig = Figure(figsize=(7, max(3.0, 0.16 * n + 1.2)), dpi=100)
    ax = fig.add_subplot()
    acc = np.nan_to_num(accuracy.numpy(), nan=0.0)
    ax.barh(range(n), acc, color=["#c0392b" if a < 0.5 else "#2e86c1" for a in acc])
    ax.set_yticks(range(n), labels=classes, fontsize=max(4, min(9, 400 // max(n, 1))))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def summarize(result: EvalResult, classes: Sequence[str], worst: int = 10) -> dict[str, Any]:
    """A JSON-ready summary: top-1/top-5, per-class accuracy and support, the ``worst`` classes below
    100% accuracy (lowest first), and the confusion matrix."""
    acc = result.per_class_accuracy.tolist()
    support = result.confusion.sum(1).tolist()
    ranked = sorted((a, c) for a, c in zip(acc, classes) if not math.isnan(a) and a < 1.0)
    return {
        "images": result.images,
        "loss": result.loss,
        "top1": result.acc1,
        "top5": result.acc5,
        "per_class": {c: {"accuracy": None if math.isnan(a) else a, "support": s}
                      for c, a, s in zip(classes, acc, support)},
        "worst_classes": [{"class": c, "accuracy": a} for a, c in ranked[:worst]],
        "classes": list(classes),
        "confusion": result.confusion.tolist(),
    }


def write_report(run_dir: str | os.PathLike, result: EvalResult, classes: Sequence[str], *, split: str = "test",
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``{split}_report.json``, ``{split}_report.md``, ``{split}_confusion_matrix.png`` and
    ``{split}_per_class_accuracy.png`` into ``run_dir``; return their paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result, classes)
    summary.update(extra or {})
    paths = {
        "json": run_dir / f"{split}_report.json",
        "markdown": run_dir / f"{split}_report.md",
        "confusion": run_dir / f"{split}_confusion_matrix.png",
        "per_class": run_dir / f"{split}_per_class_accuracy.png",
    }
    write_json(paths["json"], summary)
    save_figure(confusion_figure(result.confusion, classes, f"{split} confusion matrix"), paths["confusion"])
    save_figure(per_class_figure(result.per_class_accuracy, classes, f"{split} per-class accuracy"), paths["per_class"])
    write_text(paths["markdown"], _markdown(summary, split, paths))
    return paths


def _markdown(s: dict[str, Any], split: str, paths: dict[str, Path]) -> str:
    lines = [
        f"# {split} report", "",
        "| metric | value |", "|---|---|",
        f"| images | {s['images']} |",
        f"| top-1 accuracy | {100 * s['top1']:.2f}% |",
        f"| top-5 accuracy | {100 * s['top5']:.2f}% |",
        f"| loss | {s['loss']:.4f} |", "",
    ]
    for key in ("skipped", "run"):
        if s.get(key):
            lines += [f"**{key}**: `{json.dumps(s[key])}`", ""]
    lines += ["## Worst classes", "", "| class | accuracy |", "|---|---|"]
    lines += ([f"| {w['class']} | {100 * w['accuracy']:.1f}% |" for w in s["worst_classes"]]
              or ["| (none below 100%) | |"])
    lines += ["", "## Per-class accuracy", "", "| class | accuracy | images |", "|---|---|---|"]
    for c, v in s["per_class"].items():
        a = "n/a" if v["accuracy"] is None else f"{100 * v['accuracy']:.1f}%"
        lines.append(f"| {c} | {a} | {v['support']} |")
    lines += ["", f"![confusion matrix]({paths['confusion'].name})", "",
              f"![per-class accuracy]({paths['per_class'].name})", ""]
    return "\n".join(lines)
