"""Few-shot CLIP: accuracy after training on only k images per class, method by method.

    python experiments/finetune_clip.py --data /path/to/sports100 --model ViT-B-32 --pretrained openai
    python experiments/finetune_clip.py --shots 1,4,16 --seeds 1,2 --methods tip-adapter,tip-adapter-f
    python experiments/finetune_clip.py --full-finetune --finetune-epochs 3     # also train the image tower

Shots per class {1, 2, 4, 8, 16, all} x seeds {1, 2, 3} x methods {zero-shot, linear probe (logistic
regression by L-BFGS, from the zero-shot head), WiSE-FT (zero-shot <-> linear probe), CLIP-Adapter,
Tip-Adapter, Tip-Adapter-F}.
Image features are encoded once (cached), so the heads train in seconds. Every hyper-parameter (weight
decay, residual ratio, alpha, beta, mixing weight, and via best-on-validation checkpoints the
training length) is chosen on the validation split; the test split is only scored. Writes
results.{json,md} (test top-1, mean +- std over seeds), accuracy_vs_shots.png and TensorBoard events
into runs/<name>/.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import LabeledSubset, few_shot_indices
from ..engine import FitOptions, Phase, evaluate, fit, load_checkpoint
from ..engine.features import fit_logistic, head_accuracy, train_head
from ..models.adapters import ClipAdapter, LinearProbe, TipAdapter, wise_ft, zero_shot_linear
from ..models.prompts import prompt_names, prompt_sets
from ..models.zero_shot import ZeroShotClassifier, build_text_classifier
from ..plotting import figure_to_array, save_figure
from ..serialization import write_json, write_text
from .clip_data import ClipRunConfig, encode_split, open_split, start
from .config import config_markdown, new_run_dir, option, parse_config, setup_logging, timestamp

log = logging.getLogger("finetune_clip")
METHODS = ("zero-shot", "linear-probe", "wise-ft", "clip-adapter", "tip-adapter", "tip-adapter-f")
# Every head's hyper-parameters, chosen on the validation split: the L2 penalty of the linear probe
# (logistic regression by L-BFGS, from the zero-shot head), the WiSE-FT mixing weight, lr x residual
# ratio for CLIP-Adapter, lr for Tip-Adapter-F's keys, then alpha x beta of both Tip-Adapters.
GRIDS = {"l2": (1e-6, 1e-4, 1e-2), "wise_alpha": tuple(i / 10 for i in range(11)), "lr": (1e-3, 1e-2),
         "ratio": (0.2, 0.4, 0.6, 0.8), "tip_alpha": (0.1, 0.3, 1.0, 3.0, 10.0), "tip_beta": (1.0, 3.0, 5.5, 8.0, 12.0)}


@dataclass
class FinetuneConfig(ClipRunConfig):
    shots: str = option("1,2,4,8,16,all", "images per class used for training, comma-separated ('all': every image)")
    seeds: str = option("1,2,3", "seeds of the few-shot draws and of training")
    methods: str = option(",".join(METHODS), f"comma-separated subset of {', '.join(METHODS)}")
    steps: int = option(300, "optimizer steps of each trained head (best validation step kept)", bounds=">=1")
    full_finetune: bool = option(False, "also fine-tune the whole image tower on the k-shot images (slow)")
    finetune_epochs: int = option(3, "epochs of --full-finetune", bounds=">=1", applies=("full_finetune", (True,)))
    finetune_lr: float = option(1e-5, "learning rate of --full-finetune",
                                bounds=">0", applies=("full_finetune", (True,)))
    synthetic_train_per_class: int = option(60, "synthetic set: training images per class",
                                            bounds=">=1", applies=("data", ("synthetic",)))
    synthetic_eval_per_class: int = option(10, "synthetic set: images per class in valid and in test",
                                           bounds=">=1", applies=("data", ("synthetic",)))


def parse_shots(text: str) -> list[int | str]:
    out: list[int | str] = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item == "all":
            out.append("all")
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise SystemExit(f"error: --shots entry {item!r} is neither a positive integer nor 'all'")
    return out


def best_on_val(candidates, val):
    """``(head, hyper-parameters, validation accuracy)`` of the best candidate (the first on ties)."""
    scored = [(head, hp, head_accuracy(head, *val)) for hp, head in candidates]
    return max(scored, key=lambda t: t[2])


def run_heads(methods, zs_head: ZeroShotClassifier, train, val, test, steps, seed) -> dict[str, dict]:
    """Train/tune each method on the given few-shot features; validation picks, test scores."""
    W, scale = zs_head.text_classifier.cpu(), zs_head.logit_scale
    D, C = W.shape
    zs = zero_shot_linear(W, scale)
    out: dict[str, dict] = {}

    def record(name, head, hp, val_acc):
        out[name] = {"test": head_accuracy(head, *test), "val": val_acc, "hparams": hp}

    probes = []
    if {"linear-probe", "wise-ft"} & set(methods):
        for l2 in GRIDS["l2"]:
            probe = LinearProbe(D, C, init=zs)
            fit_logistic(probe.linear, *train, l2=l2)
            probes.append(({"l2": l2}, probe))
        probe, hp, acc = best_on_val(probes, val)
        if "linear-probe" in methods:
            record("linear-probe", probe, hp, acc)
        if "wise-ft" in methods:
            mixes = [({**hp, "alpha": a}, wise_ft(zs, probe.linear, a)) for a in GRIDS["wise_alpha"]]
            record("wise-ft", *best_on_val(mixes, val))
    if "clip-adapter" in methods:
        adapters = []
        for lr, ratio in itertools.product(GRIDS["lr"], GRIDS["ratio"]):
            torch.manual_seed(seed)
            head = ClipAdapter(W, scale, ratio=ratio)
            train_head(head, *train, steps=steps, lr=lr, weight_decay=1e-4, seed=seed, val=val)
            adapters.append(({"lr": lr, "ratio": ratio}, head))
        record("clip-adapter", *best_on_val(adapters, val))
    for name, learn in (("tip-adapter", False), ("tip-adapter-f", True)):
        if name not in methods:
            continue
        tuned = []
        for lr in GRIDS["lr"] if learn else (None,):
            head = TipAdapter(W, scale, train[0], train[1], learn_keys=learn)
            if learn:
                train_head(head, *train, steps=steps, lr=lr, weight_decay=0.0, seed=seed, val=val)
            for a, b in itertools.product(GRIDS["tip_alpha"], GRIDS["tip_beta"]):
                h = copy.copy(head)  # shares keys/buffers; alpha and beta are plain attributes
                h.alpha, h.beta = a, b
                tuned.append(({"alpha": a, "beta": b} | ({"lr": lr} if learn else {}), h))
        record(name, *best_on_val(tuned, val))
    return out


def accuracy_plot(summary: dict, shots: list, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    xs = list(range(len(shots)))
    for method, per_shot in summary.items():
        ys = [100 * per_shot[str(s)]["mean"] for s in shots]
        es = [100 * per_shot[str(s)]["std"] for s in shots]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    ax.set_xticks(xs, labels=[str(s) for s in shots])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    setup_logging()
    cfg, given = parse_config(FinetuneConfig, argv, FinetuneConfig(), __doc__)
    shots = parse_shots(cfg.shots)
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds {cfg.seeds!r} must be comma-separated integers") from None
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods or not seeds or not shots:
        raise SystemExit(f"error: --methods must be a non-empty subset of {', '.join(METHODS)} (got {bad or methods}); "
                         f"--seeds and --shots must not be empty")
    kind, root, device, precision, bundle = start(cfg, given)
    synthetic = dict(num_classes=cfg.synthetic_classes, train_per_class=cfg.synthetic_train_per_class,
                     eval_per_class=cfg.synthetic_eval_per_class, size=cfg.synthetic_size)
    train_split = "train"
    splits = {s: open_split(kind, root, s, bundle.transforms(False), synthetic) for s in ("train", "valid", "test")} \
        if kind != "logical_rhythm" else None
    if splits is None:
        raise SystemExit("error: the few-shot ablation needs train/valid/test splits (100-Sports layout or "
                         "'synthetic')")
    classes = splits[train_split].classes
    counts = torch.bincount(torch.tensor(splits[train_split].targets), minlength=len(classes))
    too_many = [k for k in shots if k != "all" and k > int(counts.min())]
    if too_many:
        smallest = classes[int(counts.argmin())]
        raise SystemExit(f"error: --shots {too_many} exceed the smallest class ({smallest!r} has {int(counts.min())} "
                         f"training images)")

    feats = {s: encode_split(bundle, ds, device=device, precision=precision, batch_size=cfg.batch_size,
                             workers=cfg.workers, cache_dir=cfg.cache_dir, progress=cfg.progress, desc=f"encode {s}")
             for s, ds in splits.items()}
    names = prompt_names(classes, kind)
    W = build_text_classifier(bundle.model, bundle.tokenizer, names, prompt_sets()[cfg.prompts])
    zs_head = ZeroShotClassifier(bundle.model, W, classes=classes)
    zs_linear = zero_shot_linear(W.cpu(), zs_head.logit_scale)
    zero_shot = {"test": head_accuracy(zs_linear, *feats["test"]), "val": head_accuracy(zs_linear, *feats["valid"])}

    data_tag = kind if kind != "sports100" else root.name
    default_name = f"fewshot-{bundle.name}-{Path(bundle.pretrained).name}-{data_tag}-{timestamp()}"
    run_dir = new_run_dir(cfg.out, cfg.name or default_name)
    write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    rows = []
    head_methods = [m for m in methods if m != "zero-shot"]
    for k, seed in itertools.product(shots, seeds):
        train_labels = feats["train"][1]
        idx = (list(range(len(train_labels))) if k == "all"
               else few_shot_indices(train_labels.tolist(), k, seed, classes))
        train = (feats["train"][0][idx], train_labels[idx])
        results = run_heads(head_methods, zs_head, train, feats["valid"], feats["test"], cfg.steps, seed)
        if "zero-shot" in methods:
            results["zero-shot"] = {**zero_shot, "hparams": {}}
        if cfg.full_finetune:
            results["full-finetune"] = full_finetune(bundle, W, splits, idx, cfg, device, precision, seed,
                                                     run_dir / f"ft-{k}-{seed}")
        for method, r in results.items():
            rows.append({"method": method, "shots": k, "seed": seed, **r})
        log.info("shots %s seed %d: %s", k, seed, {m: round(100 * r["test"], 2) for m, r in results.items()})

    ordered = [m for m in (*METHODS, "full-finetune") if any(r["method"] == m for r in rows)]
    summary = {m: {str(k): _stats([r["test"] for r in rows if r["method"] == m and r["shots"] == k]) for k in shots}
               for m in ordered}
    header = "| method | " + " | ".join(str(k) for k in shots) + " |\n|---|" + "---|" * len(shots) + "\n"
    body = "".join(f"| {m} | " + " | ".join(f"{100 * v[str(k)]['mean']:.1f} ± {100 * v[str(k)]['std']:.1f}"
                                            for k in shots) + " |\n" for m, v in summary.items())
    table = header + body
    title = f"{bundle.name} ({bundle.pretrained}) on {kind}: test top-1 (%), mean ± std over seeds {seeds}"
    write_text(run_dir / "results.md", f"# Few-shot ablation\n\n{title}\n\n{table}\nShots are training images per "
                                       f"class; hyper-parameters chosen on the validation split.\n")
    write_json(run_dir / "results.json", {"config": dataclasses.asdict(cfg), "model": bundle.name,
                                          "pretrained": bundle.pretrained, "dataset": kind, "summary": summary,
                                          "rows": rows, "grids": GRIDS})
    fig = accuracy_plot(summary, shots, f"{bundle.name} ({bundle.pretrained}), {kind}")
    save_figure(fig, run_dir / "accuracy_vs_shots.png")

    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run_dir)) as writer:
        writer.add_text("config", config_markdown(cfg))
        writer.add_text("results", table)
        for m, per_shot in summary.items():
            for i, k in enumerate(shots):
                writer.add_scalar(f"fewshot/{m}", per_shot[str(k)]["mean"], i)
        writer.add_image("fewshot/accuracy_vs_shots", figure_to_array(fig), 0, dataformats="HWC")
    print(f"{title}\n\n{table}")
    print(f"wrote {run_dir}/ (results.md, results.json, accuracy_vs_shots.png)")
    return {"run_dir": run_dir, "summary": summary, "rows": rows}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def full_finetune(bundle, W, splits, idx, cfg, device, precision, seed, run_dir) -> dict:
    """Fine-tune a copy of the image tower (head: the fixed zero-shot text classifier) on the k-shot
    images with augmentation; the best validation epoch is scored on test."""
    torch.manual_seed(seed)
    model = ZeroShotClassifier(copy.deepcopy(bundle.model), W.to(device)).to(device)
    train_ds = copy.copy(splits["train"])
    train_ds.transform = bundle.transforms(True, scale=(0.5, 1.0))
    bs = min(cfg.batch_size, len(idx))
    train_loader = DataLoader(LabeledSubset(train_ds, idx), batch_size=bs, shuffle=True, drop_last=True,
                              num_workers=cfg.workers, generator=torch.Generator())
    val_loader = DataLoader(splits["valid"], batch_size=cfg.batch_size, num_workers=cfg.workers)
    phase = Phase("finetune", cfg.finetune_epochs, cfg.finetune_lr, {"visual": list(model.visual.parameters())})
    result = fit(model, [phase], train_loader, val_loader, loss_fn=torch.nn.CrossEntropyLoss(), device=device,
                 classes=splits["train"].classes, run_dir=run_dir,
                 options=FitOptions(precision=precision, channels_last=False, seed=seed, progress=cfg.progress,
                                    warmup_epochs=0.0))
    model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    test_loader = DataLoader(splits["test"], batch_size=cfg.batch_size, num_workers=cfg.workers)
    test = evaluate(model, test_loader, device=device, num_classes=W.shape[1], precision=precision, channels_last=False,
                    progress=cfg.progress)
    return {"test": test.acc1, "val": result.best_score,
            "hparams": {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr}}


if __name__ == "__main__":
    main()
