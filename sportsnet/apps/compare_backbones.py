"""Which backbone learns the offline set, how fast, and which one looks at the right thing: trains VGG19 (the
offline demo's model) and other torchvision/timm backbones on the synthetic set at the demo's budget, explains
each run's test split with Grad-CAM and a gradient-free method, and writes one table.

    python experiments/compare_backbones.py                       # the default five, about an hour on 2 cores
    python experiments/compare_backbones.py --archs vgg19,timm:convnext_atto --explain-limit 100
    python -m benchmarks.tables --update                          # the table into docs/training.md

Each backbone trains with its program's offline demo (train_vgg19.py for ``vgg19``, train.py --arch for the
others): the same synthetic set (10 classes, 96 px), 12 epochs from random weights, the hardware's precision
and memory format. Columns: test top-1, training images per second (the mean over epochs of the training
loop's own count), Grad-CAM images per second (explain.py's time per image), the pointing game of Grad-CAM
and of the gradient-free method on the synthetic objects' boxes, and the parameters. The result file
(``--results``, under benchmarks/results/) names the machine; benchmarks/tables.py renders it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..cam import method_name
from ..results import caption, environment, result_stem, table, write_result
from .config import device_from_flag, option, parse_config, setup_logging
from .runs import load_run

log = logging.getLogger("compare_backbones")
DEFAULT_ARCHS = "vgg19,torchvision:resnet18,torchvision:efficientnet_b0,timm:convnext_atto,timm:vit_tiny_patch16_224"


@dataclass
class CompareConfig:
    archs: str = option(DEFAULT_ARCHS, "comma-separated: 'vgg19' (train_vgg19.py's demo) and train.py --arch names")
    out: str = option("runs/backbones", "folder of the runs and their explanations")
    gradient_free: str = option("ablationcam", "the gradient-free method beside Grad-CAM")
    explain_limit: int = option(0, "explain only the first N test images (0: all)", bounds=">=0")
    epochs: int = option(0, "epochs per backbone (0: the demo's budget, 12); fewer for a quick look", bounds=">=0")
    results: str = option("", "result file name under benchmarks/results/ (default: backbones_cpu_<ISA> or "
                              "backbones_<GPU>)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    progress: bool = option(False, "progress bars of the runs")


def tag(arch: str) -> str:
    return arch.replace(":", "-")


def train_backbone(arch: str, cfg: CompareConfig) -> Path:
    """Train ``arch`` with its program's offline demo; returns the run folder."""
    from . import train, train_vgg19

    run_dir = Path(cfg.out) / tag(arch)
    if (run_dir / "test_report.json").is_file():
        log.info("%s: reusing the finished run %s", arch, run_dir)
        return run_dir
    args = ["--data", "synthetic", "--out", cfg.out, "--name", tag(arch), "--device", cfg.device]
    args += [] if cfg.progress else ["--no-progress"]
    if cfg.epochs:
        args += ["--phase2-epochs", str(cfg.epochs)]
    if arch == "vgg19":
        train_vgg19.main(args)
    else:
        train.main(["--arch", arch, *args])
    return run_dir


def explain_run(run_dir: Path, cfg: CompareConfig, method: str) -> dict:
    from . import explain

    args = ["--checkpoint", str(run_dir), "--data", "synthetic", "--method", f"gradcam,{method}", "--out",
            str(run_dir / "explain"), "--overlays", "0", "--deletion-steps", "0", "--device", cfg.device]
    args += [] if cfg.progress else ["--no-progress"]
    if cfg.explain_limit:
        args += ["--limit", str(cfg.explain_limit)]
    return explain.main(args)


def compare(cfg: CompareConfig) -> dict:
    device = device_from_flag(cfg.device)
    method = method_name(cfg.gradient_free)
    rows = []
    for arch in [a.strip() for a in cfg.archs.split(",") if a.strip()]:
        started = time.perf_counter()
        run_dir = train_backbone(arch, cfg)
        report = json.loads((run_dir / "test_report.json").read_text())
        explained = explain_run(run_dir, cfg, method)
        model, run_cfg, _ = load_run(run_dir)
        history = report["history"]
        metrics = explained["metrics"]
        rows.append({
            "arch": arch, "run": str(run_dir), "test_acc1": report["top1"],
            "train_images_per_s": sum(h["images_per_s"] for h in history) / len(history),
            "explain_images_per_s": 1.0 / metrics["seconds_per_image/gradcam"],
            "pointing_game_gradcam": metrics["pointing_game/gradcam"],
            "pointing_game_gradient_free": metrics[f"pointing_game/{method}"],
            "pointing_game_center": metrics.get("pointing_game/center"),
            "parameters": sum(p.numel() for p in model.parameters()), "epochs": len(history),
            "image_size": run_cfg.image_size, "precision": report["run"]["precision"],
            "target_layer": explained["target_layer"], "explained_images": explained["images"],
            "seconds": time.perf_counter() - started,
        })
        log.info("%s: %s", arch, rows[-1])
    return {"benchmark": "backbones", "environment": environment(device), "gradient_free": method, "rows": rows,
            "config": vars(cfg)}


def backbones_table(p: dict) -> str:
    """The comparison as Markdown (benchmarks/tables.py)."""
    method = p["gradient_free"]
    rows = [[r["arch"], f"{100 * r['test_acc1']:.1f}%", f"{r['train_images_per_s']:.0f}",
             f"{r['explain_images_per_s']:.0f}", f"{100 * r['pointing_game_gradcam']:.1f}%",
             f"{100 * r['pointing_game_gradient_free']:.1f}%", f"{r['parameters'] / 1e6:.2f}M",
             ", ".join(r["target_layer"])] for r in p["rows"]]
    first = p["rows"][0]
    centre = first.get("pointing_game_center")
    text = (f"{first['epochs']} epochs at {first['image_size']} px from random weights, {first['precision']}, "
            f"{first['explained_images']} test images explained; {caption(p['environment'])}, torch "
            f"{p['environment']['torch']}, {p['environment']['time'][:10]}.\n\n"
            + table(rows, ["backbone", "test top-1", "train img/s", "Grad-CAM img/s", "pointing game (Grad-CAM)",
                           f"pointing game ({method})", "parameters", "target layer"]))
    if centre is not None:
        text += f"\n\nA map that always points at the image centre scores {100 * centre:.1f}% on the same images."
    return text


def main(argv=None) -> dict:
    setup_logging()
    cfg, _ = parse_config(CompareConfig, argv, CompareConfig(), __doc__)
    try:
        method_name(cfg.gradient_free)
    except ValueError as e:
        raise SystemExit(f"error: --gradient-free: {e}") from None
    payload = compare(cfg)
    name = cfg.results or result_stem("backbones", device_from_flag(cfg.device), payload["environment"])
    path = write_result(name, payload)
    print(backbones_table(payload))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
