"""Zero-shot sports classification with CLIP, and a prompt-set ablation.

    python experiments/zero_shot_clip.py --data /path/to/sports100 --model ViT-B-32 --pretrained openai
    python experiments/zero_shot_clip.py --data /path/to/logical_rhythm --split train --prompts imagenet
    python experiments/zero_shot_clip.py --pretrained none        # no weights: the pipeline end to end
    python experiments/zero_shot_clip.py                          # offline: the offline demo (below)

Image features are encoded once (cached under --cache-dir) and scored against each prompt set's text
classifier. Writes into runs/<name>/: test_report.{json,md} (top-1/top-5, per-class accuracy, worst
classes, confusion matrix) with PNGs, prompt_ablation.{json,md}, and TensorBoard events. The last line
is ``zero-shot top-1 accuracy: NN.NN%``.

The offline demo: with no --model/--pretrained given, no dataset, and the default weights neither
cached nor downloadable, the script says so in one line and instead pre-trains a small CLIP
(sportsnet-demo-rn) contrastively on the synthetic set's *training* captions, with
pretrain_clip.py (runs/clip-demo-<recipe>/, reused by later calls), then classifies the synthetic
test split zero-shot from the class names alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..data.synthetic import FORMAT_VERSION as SYNTHETIC_FORMAT
from ..engine import EvalResult, write_report
from ..engine.report import confusion_figure
from ..models.clip import CONFIGS as CLIP_CONFIGS
from ..models.clip import DEMO_ARCH
from ..models.download import WeightsUnavailable
from ..models.prompts import prompt_names, prompt_sets
from ..models.zero_shot import build_text_classifier
from ..plotting import figure_to_array
from ..serialization import write_json, write_text
from .clip_data import DEFAULT_SPORTS, ClipRunConfig, encode_split, open_split, start
from .config import (
    config_markdown,
    device_from_flag,
    new_run_dir,
    option,
    parse_config,
    setup_logging,
    timestamp,
)

log = logging.getLogger("zero_shot_clip")
# The offline demo's contrastive pre-training, as pretrain_clip.py flags: under three minutes on two CPU
# cores in fp32 (README: the measured time and accuracy).
DEMO_PRETRAIN = ["--model", DEMO_ARCH, "--pretrained", "none", "--data", "synthetic", "--epochs", "20", "--lr", "1e-3",
                 "--batch-size", "64", "--warmup-steps", "20", "--seed", "0"]


@dataclass
class ZeroShotConfig(ClipRunConfig):
    split: str = option("test", "split to evaluate (Logical Rhythm: train, the only labelled one)")


def offline_demo_checkpoint(cfg: ZeroShotConfig, workers: int, arch: str | None = None) -> Path:
    """The demo CLIP's best checkpoint: trained by pretrain_clip.py on the synthetic set's training
    captions the first time (a run killed midway is resumed), reused afterwards. ``arch``: another of our
    architectures (``sportsnet/models/clip_configs``) trained by the same recipe instead of the demo's
    (the trust tables' ViT: ``sportsnet-demo-vit``)."""
    from . import pretrain_clip

    recipe = [*DEMO_PRETRAIN, "--synthetic-size", str(cfg.synthetic_size), "--precision", cfg.precision]
    if arch is not None:
        recipe[recipe.index("--model") + 1] = arch
    # The folder is named by everything the model depends on: the recipe, the synthetic set's format
    # (its captions) and the architecture's definition, so a change to any of them trains anew.
    arch_file = CLIP_CONFIGS / f"{recipe[recipe.index('--model') + 1]}.json"
    key = [*recipe, f"synthetic-format-{SYNTHETIC_FORMAT}", arch_file.read_text() if arch_file.is_file() else ""]
    run = Path(cfg.out) / f"clip-demo-{hashlib.sha256(' '.join(key).encode()).hexdigest()[:8]}"
    best = run / "checkpoints" / "best.pt"
    if (run / "retrieval.json").is_file() and best.is_file():
        log.info("offline CLIP demo: reusing the model pre-trained in %s", run)
        return best
    runtime = ["--workers", str(workers), "--device", cfg.device, "--progress" if cfg.progress else "--no-progress"]
    if (run / "checkpoints" / "last.pt").is_file():
        pretrain_clip.main(["--resume", str(run), *runtime])
    else:
        if run.exists():  # an earlier demo stopped before its first checkpoint: nothing in it to keep
            shutil.rmtree(run)
        pretrain_clip.main([*recipe, "--out", cfg.out, "--name", run.name, *runtime])
    return best


def main(argv=None) -> dict:
    setup_logging()
    cfg, given = parse_config(ZeroShotConfig, argv, ZeroShotConfig(), __doc__)
    try:
        kind, root, device, precision, bundle = start(cfg, given, offline_demo_ok=not (given & {"model", "pretrained"}))
    except WeightsUnavailable as e:
        device = device_from_flag(cfg.device)
        no_data = "" if cfg.data else f" and no dataset at {DEFAULT_SPORTS}"
        print(f"no {cfg.model} weights {cfg.pretrained!r} here ({e.reason}){no_data}: running the offline CLIP demo, "
              f"a small CLIP pre-trained on the synthetic set's training captions (--pretrained PATH uses your "
              f"weights)", flush=True)
        # Loading 600 small images is cheaper in-process than in workers that compete for the CPU's cores.
        workers = cfg.workers if "workers" in given or device.type == "cuda" else 0
        cfg = dataclasses.replace(cfg, model=DEMO_PRETRAIN[DEMO_PRETRAIN.index("--model") + 1], data="synthetic",
                                  pretrained=str(offline_demo_checkpoint(cfg, workers)))
        kind, root, device, precision, bundle = start(cfg, given)
    if bundle.pretrained == "none":
        print("no pretrained weights (--pretrained none): random weights, accuracy will be near chance", flush=True)
    ds = open_split(kind, root, cfg.split, bundle.transforms(False),
                    dict(num_classes=cfg.synthetic_classes, size=cfg.synthetic_size))
    classes = ds.classes
    names = prompt_names(classes, kind)
    feats, labels = encode_split(bundle, ds, device=device, precision=precision, batch_size=cfg.batch_size,
                                 workers=cfg.workers, cache_dir=cfg.cache_dir, progress=cfg.progress,
                                 desc=f"encode {cfg.split}")
    scale = float(bundle.model.logit_scale.detach().exp())

    results: dict[str, EvalResult] = {}
    for set_name, templates in prompt_sets().items():
        weights = build_text_classifier(bundle.model, bundle.tokenizer, names, templates).cpu()
        results[set_name] = EvalResult.from_logits(scale * feats @ weights, labels, len(classes))
    main_result = results[cfg.prompts]

    data_tag = kind if kind != "sports100" else root.name
    default_name = f"zeroshot-{bundle.name}-{Path(bundle.pretrained).name}-{data_tag}-{timestamp()}"
    run_dir = new_run_dir(cfg.out, cfg.name or default_name)
    write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    ablation = {k: {"top1": r.acc1, "top5": r.acc5, "templates": len(prompt_sets()[k])} for k, r in results.items()}
    write_json(run_dir / "prompt_ablation.json", ablation)
    rows = "\n".join(f"| {k} | {v['templates']} | {100 * v['top1']:.2f}% | {100 * v['top5']:.2f}% |"
                     for k, v in ablation.items())
    table = f"| prompt set | templates | top-1 | top-5 |\n|---|---|---|---|\n{rows}\n"
    write_text(run_dir / "prompt_ablation.md",
               f"# Prompt-set ablation ({bundle.name}, {bundle.pretrained}, {kind} {cfg.split})\n\n{table}")
    paths = write_report(run_dir, main_result, classes, split=cfg.split, extra={
        "run": {"model": bundle.name, "pretrained": bundle.pretrained, "data": str(root), "dataset": kind,
                "prompts": cfg.prompts, "device": str(device), "precision": precision},
        "prompt_names": dict(zip(classes, names)), "prompt_ablation": ablation,
        "skipped": {s.path: s.reason for s in ds.skipped},
    })

    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run_dir)) as writer:
        writer.add_text("config", config_markdown(cfg))
        writer.add_text("prompt_ablation", table)
        for k, r in results.items():
            writer.add_scalar(f"zero_shot/top1_{k}", r.acc1, 0)
            writer.add_scalar(f"zero_shot/top5_{k}", r.acc5, 0)
        confusion = figure_to_array(confusion_figure(main_result.confusion, classes))
        writer.add_image(f"{cfg.split}/confusion_matrix", confusion, 0, dataformats="HWC")
    print(table)
    print(f"report: {paths['markdown']}; TensorBoard: tensorboard --logdir {cfg.out}")
    print(f"zero-shot top-1 accuracy: {100 * main_result.acc1:.2f}%")
    return {"run_dir": run_dir, "top1": main_result.acc1, "ablation": ablation}


if __name__ == "__main__":
    main()
