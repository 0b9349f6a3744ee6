"""The trust tables: every explanation method x every metric, with the sanity checks, on the offline demo's two
kinds of model, written as result files that ``python -m benchmarks.tables --update`` renders into
docs/explanations.md.

    python -m benchmarks.trust                          # both models (trains what is missing first)
    python -m benchmarks.trust --models vgg --images 100

- ``vgg``: the offline demo's VGG19 (``make demo``'s recipe, in fp32; ``--vgg-run`` names a trained run, else
  runs/trust-vgg-demo is trained once and reused);
- ``clip-vit``: a small ViT CLIP (``sportsnet-demo-vit``) pre-trained on the synthetic set's training captions
  by the offline CLIP demo's recipe (reused once trained), explained zero-shot over the class names: the
  transformer-native methods (LeGrad, rollout, gradient-weighted rollout) next to the CAM methods.

Each is ``experiments/explain.py --method all --road --robustness --sanity`` on the off-centre evaluation split
(where always pointing at the centre scores low), a class-stratified sample of ``--images`` images, in fp32;
the result files are ``trust_<model>_<host class>.json``, the sanity checks' plots
docs/images/trust_<model>_sanity.png.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from benchmarks.common import comma_list
from sportsnet.apps import explain, train_vgg19
from sportsnet.apps.zero_shot_clip import ZeroShotConfig, offline_demo_checkpoint
from sportsnet.data import OFFCENTRE_SPLIT
from sportsnet.results import environment, result_stem

MODELS = ("vgg", "clip-vit")
#: Where the sanity checks' plots go, beside the tables in docs/explanations.md.
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "images"
CLIP_ARCH = "sportsnet-demo-vit"


def vgg_run(run: str, runs: str) -> Path:
    """A trained train_vgg19.py run: ``run`` when given, else runs/trust-vgg-demo (trained now if missing)."""
    if run:
        return Path(run)
    path = Path(runs) / "trust-vgg-demo"
    if not (path / "checkpoints" / "best.pt").is_file():
        train_vgg19.main(["--out", runs, "--name", path.name, "--precision", "fp32", "--no-progress"])
    return path


def explain_flags(args, stem: str, out: Path) -> list[str]:
    return ["--data", "synthetic", "--split", OFFCENTRE_SPLIT, "--limit", str(args.images), "--method", "all",
            "--samples", "4", "--road", "--robustness", "--sensitivity-samples", str(args.sensitivity_samples),
            "--sanity", "--sanity-images", str(args.sanity_images),
            "--precision", "fp32", "--overlays", "16", "--no-progress", "--out", str(out), "--results", stem]


def main(argv=None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of %(default)s")
    ap.add_argument("--images", type=int, default=60, help="images explained per model (default: %(default)s)")
    ap.add_argument("--sanity-images", type=int, default=24, help="images of the sanity checks (default: "
                                                                   "%(default)s)")
    ap.add_argument("--sensitivity-samples", type=int, default=4, help="noisy copies per image of max/avg "
                                                                        "sensitivity (default: %(default)s)")
    ap.add_argument("--vgg-run", default="", help="a trained train_vgg19.py run (default: runs/trust-vgg-demo)")
    ap.add_argument("--runs", default="runs", help="where the demo models are trained (default: %(default)s)")
    ap.add_argument("--out", default="outputs/trust", help="explain.py's outputs (default: %(default)s)")
    args = ap.parse_args(argv)
    models = comma_list("--models", args.models, choices=MODELS)
    for flag, value in (("--images", args.images), ("--sanity-images", args.sanity_images),
                        ("--sensitivity-samples", args.sensitivity_samples)):
        if value < 1:
            raise SystemExit(f"error: {flag} {value}: expected a positive integer")
    stem_env = environment(torch.device("cpu"))
    reports = {}
    for model in models:
        stem = result_stem(f"trust_{model.replace('-', '_')}_demo", torch.device("cpu"), stem_env)
        out = Path(args.out) / model
        if model == "vgg":
            flags = ["--checkpoint", str(vgg_run(args.vgg_run, args.runs)), *explain_flags(args, stem, out)]
        else:
            checkpoint = offline_demo_checkpoint(ZeroShotConfig(out=args.runs, precision="fp32", progress=False), 0,
                                                 arch=CLIP_ARCH)
            flags = ["--clip", CLIP_ARCH, "--pretrained", str(checkpoint), "--prompts", "single",
                     *explain_flags(args, stem, out)]
        reports[model] = explain.main(flags)
        figure = FIGURES / f"{stem.split('_cpu')[0]}_sanity.png"
        shutil.copyfile(out / "sanity.png", figure)
        print(f"wrote {figure}")
    return reports


if __name__ == "__main__":
    main()
