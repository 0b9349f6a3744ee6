"""Few-shot CLIP: accuracy after training on only k images per class, method by method, with and without a
validation split.

    python experiments/finetune_clip.py --data /path/to/sports100 --model ViT-B-32 --pretrained openai
    python experiments/finetune_clip.py --shots 1,4,16 --seeds 1,2 --methods lp++,gda,clap,tip-adapter-f
    python experiments/finetune_clip.py --protocols validation-free     # as if there were no validation split
    python experiments/finetune_clip.py --full-finetune --finetune-epochs 3     # also train the image tower

Shots per class {1, 2, 4, 8, 16, all} x seeds {1, 2, 3} (each seed draws its own shots) x methods {zero-shot,
linear probe (logistic regression by L-BFGS, from the zero-shot head), WiSE-FT, CLIP-Adapter, Tip-Adapter,
Tip-Adapter-F, LP++, GDA, CLAP, CoOp, CLIP-LoRA} x protocols {validation: every hyper-parameter, the training
length included, chosen on the validation split; validation-free: fixed hyper-parameters, the last step}
(sportsnet/apps/fewshot.py says what each protocol fixes per method). Image features are encoded once (cached),
with --augment-views augmented views of each shot, so the heads train in seconds; CoOp trains its prompt context
through the text tower, CLIP-LoRA both towers on the images. The test split is only scored. Writes
results.{json,md} (test top-1, mean +- std over seeds, and training seconds), accuracy_vs_shots.png and
TensorBoard events (every trained method's loss curve per draw) into runs/<name>/; --results also writes the
result file that benchmarks/tables.py renders into docs/clip.md, naming the machine.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import LabeledSubset, few_shot_indices
from ..engine import FitOptions, Phase, evaluate, fit, load_checkpoint
from ..models.prompts import prompt_names, prompt_sets
from ..models.zero_shot import ZeroShotClassifier, build_text_classifier
from ..plotting import figure_to_array, save_figure
from ..results import caption, environment, result_stem, table, write_result
from ..serialization import write_json, write_text
from .clip_data import ClipRunConfig, encode_split, encode_views, open_split, start
from .config import config_markdown, new_run_dir, option, parse_config, setup_logging, timestamp
from .fewshot import FIXED, GRIDS, METHODS, PROTOCOL_NOTES, PROTOCOLS, Shots, Task, run_methods

log = logging.getLogger("finetune_clip")


@dataclass
class FinetuneConfig(ClipRunConfig):
    shots: str = option("1,2,4,8,16,all", "images per class used for training, comma-separated ('all': every image)")
    seeds: str = option("1,2,3", "seeds of the few-shot draws and of training")
    methods: str = option(",".join(METHODS), f"comma-separated subset of {', '.join(METHODS)}")
    protocols: str = option(",".join(PROTOCOLS), "validation (hyper-parameters and training length chosen on the "
                            "validation split), validation-free (fixed ones, the last step), or both")
    augment_views: int = option(10, "augmented views (random crop and flip) encoded per shot beside its plain one; "
                                "the heads on cached features train on all of them (GDA needs them at one shot)",
                                bounds=">=0")
    steps: int = option(300, "optimizer steps of CLIP-Adapter, Tip-Adapter-F and LP++", bounds=">=1")
    coop_steps: int = option(200, "optimizer steps of CoOp's context (batch 32 of cached features)", bounds=">=1")
    lora_steps_per_shot: int = option(500, "CLIP-LoRA's optimizer steps per shot per class (the paper's 500: "
                                      "8000 steps at 16 shots)", bounds=">=1")
    results: str = option("", "also write the summary as the result file NAME (.json, in benchmarks/results/), "
                          "rendered into docs/clip.md by benchmarks/tables.py ('auto': fewshot_<data>_<device>)")
    full_finetune: bool = option(False, "also fine-tune the whole image tower on the k-shot images (slow; best "
                                                "validation epoch, so under the validation protocol only)")
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


def _subset(flag: str, text: str, allowed) -> list[str]:
    items = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in items if m not in allowed]
    if bad or not items:
        raise SystemExit(f"error: --{flag} must be a non-empty subset of {', '.join(allowed)} (got {bad or items})")
    return items


def accuracy_plot(summary: dict, shots: list, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(summary), 4.5), dpi=100)
    xs = list(range(len(shots)))
    for i, (protocol, methods) in enumerate(summary.items()):
        ax = fig.add_subplot(1, len(summary), i + 1)
        for method, per_shot in methods.items():
            ys = [100 * per_shot[str(s)]["mean"] for s in shots]
            es = [100 * per_shot[str(s)]["std"] for s in shots]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        ax.set_xticks(xs, labels=[str(s) for s in shots])
        ax.set_xlabel("training images per class")
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.set_title(f"{title}\n{protocol}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(rows: list[dict], shots: list, protocols: list[str], key: str = "test") -> dict:
    """``{protocol: {method: {shots: mean/std/n of key over seeds}}}``, methods in :data:`METHODS` order."""
    order = [*METHODS, "full-finetune"]
    out = {}
    for protocol in protocols:
        mine = [r for r in rows if r["protocol"] == protocol]
        methods = [m for m in order if any(r["method"] == m for r in mine)]
        out[protocol] = {m: {str(k): _stats([r[key] for r in mine if r["method"] == m and r["shots"] == k])
                             for k in shots} for m in methods}
    return out


def accuracy_table(per_method: dict, shots) -> str:
    """``{method: {shots: stats}}`` as a Markdown table of test top-1 (%), mean ± std per number of shots."""
    rows = [[m, *(f"{100 * v[str(k)]['mean']:.1f} ± {100 * v[str(k)]['std']:.1f}" for k in shots)]
            for m, v in per_method.items()]
    return table(rows, ["method", *map(str, shots)])


def fewshot_table(p: dict) -> str:
    """The 1/2/4/8/16-shot tables of a result file (``benchmark: fewshot``) as Markdown: test top-1 (mean +- std over
    the seeds) per protocol, the training seconds, and what each protocol fixes (benchmarks/tables.py)."""
    shots, seeds, summary, seconds = p["shots"], p["seeds"], p["summary"], p["seconds"]
    cfg = p["config"]
    parts = [f"{p['model']} ({p['pretrained_label']}) on {p['dataset']}, {len(seeds)} seeds ({p['test_images']} test "
             f"images, {p['classes']} classes), {cfg['augment_views']} augmented views per shot, "
             f"{cfg['steps']} head steps, {cfg['coop_steps']} CoOp steps, {cfg['lora_steps_per_shot']} CLIP-LoRA "
             f"steps per shot, {p['precision']}; {caption(p['environment'])}, torch {p['environment']['torch']}, "
             f"{p['environment']['time'][:10]}."]
    for protocol, methods in summary.items():
        parts.append(f"**{protocol}**: test top-1 (%), mean ± standard deviation over the seeds (population)\n\n"
                     + accuracy_table(methods, shots))
    protocols = list(summary)
    methods = list(dict.fromkeys(m for per_method in summary.values() for m in per_method))

    def secs(protocol, m, k):
        per_shot = seconds[protocol].get(m)
        return f"{per_shot[str(k)]['mean']:.2f}" if per_shot else "-"

    rows = [[m, *(" / ".join(secs(pr, m, k) for pr in protocols) for k in shots)] for m in methods]
    parts.append(f"**training seconds** per draw ({' / '.join(protocols)}), mean over seeds\n\n"
                 + table(rows, ["method", *map(str, shots)]))
    rows = [[m, *p["protocol_notes"][m]] for m in methods if m in p["protocol_notes"]]
    parts.append("**what each protocol fixes**\n\n" + table(rows, ["method", "validation picks",
                                                                     "validation-free fixes"]))
    return "\n\n".join(parts)


def _weights_label(pretrained: str) -> str:
    """A tag as it is; a checkpoint file as ``<run folder>/<file>`` (``clip-demo-9b98c49f/best.pt``)."""
    path = Path(pretrained)
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def main(argv=None) -> dict:
    setup_logging()
    cfg, given = parse_config(FinetuneConfig, argv, FinetuneConfig(), __doc__)
    shots = parse_shots(cfg.shots)
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds {cfg.seeds!r} must be comma-separated integers") from None
    methods = _subset("methods", cfg.methods, METHODS)
    protocols = _subset("protocols", cfg.protocols, PROTOCOLS)
    if not seeds or not shots:
        raise SystemExit("error: --seeds and --shots must not be empty")
    if cfg.full_finetune and "validation" not in protocols:
        raise SystemExit(f"error: --full-finetune keeps the best validation epoch, so it needs the validation protocol "
                         f"(--protocols {cfg.protocols!r} leaves it out)")
    if "gda" in methods and 1 in shots and cfg.augment_views == 0:
        raise SystemExit("error: GDA at --shots 1 needs --augment-views >= 1: it estimates a covariance within "
                         "classes, and one plain view per class has none")
    kind, root, device, precision, bundle = start(cfg, given)
    synthetic = dict(num_classes=cfg.synthetic_classes, train_per_class=cfg.synthetic_train_per_class,
                     eval_per_class=cfg.synthetic_eval_per_class, size=cfg.synthetic_size)
    if kind == "logical_rhythm":
        raise SystemExit("error: the few-shot ablation needs train/valid/test splits (100-Sports layout or "
                         "'synthetic')")
    splits = {s: open_split(kind, root, s, bundle.transforms(False), synthetic) for s in ("train", "valid", "test")}
    classes = splits["train"].classes
    counts = torch.bincount(torch.tensor(splits["train"].targets), minlength=len(classes))
    too_many = [k for k in shots if k != "all" and k > int(counts.min())]
    if too_many:
        smallest = classes[int(counts.argmin())]
        raise SystemExit(f"error: --shots {too_many} exceed the smallest class ({smallest!r} has {int(counts.min())} "
                         f"training images)")

    encode = dict(device=device, precision=precision, batch_size=cfg.batch_size, workers=cfg.workers,
                  cache_dir=cfg.cache_dir, progress=cfg.progress)
    feats = {s: encode_split(bundle, ds, desc=f"encode {s}", **encode) for s, ds in splits.items()}
    train_labels = feats["train"][1]
    draws = {(k, seed): (list(range(len(train_labels))) if k == "all"
                         else few_shot_indices(train_labels.tolist(), k, seed, classes))
             for k, seed in itertools.product(shots, seeds)}
    augmenting = copy.copy(splits["train"])
    augmenting.transform = bundle.transforms(True, scale=(0.5, 1.0))
    drawn = sorted({i for idx in draws.values() for i in idx})
    views = (encode_views(bundle, augmenting, drawn, cfg.augment_views, **encode) if cfg.augment_views
             else torch.empty(0, len(drawn), feats["train"][0].shape[1]))
    row_of = {i: r for r, i in enumerate(drawn)}

    names = prompt_names(classes, kind)
    W = build_text_classifier(bundle.model, bundle.tokenizer, names, prompt_sets()[cfg.prompts])
    zs_head = ZeroShotClassifier(bundle.model, W, classes=classes)

    data_tag = kind if kind != "sports100" else root.name
    default_name = f"fewshot-{bundle.name}-{Path(bundle.pretrained).name}-{data_tag}-{timestamp()}"
    run_dir = new_run_dir(cfg.out, cfg.name or default_name)
    write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir))
    rows = []
    for (k, seed), idx in draws.items():
        n = max(1, len(idx) // len(classes))
        shots_set = Shots(feats["train"][0][idx], train_labels[idx], views[:, [row_of[i] for i in idx]], idx)

        def curve(method, step, loss, k=k, seed=seed):
            writer.add_scalar(f"train_loss/{method}/{k}-shot/seed{seed}", loss, step)

        task = Task(W.cpu().float(), zs_head.logit_scale, shots_set, feats["valid"], feats["test"], cfg.steps, seed,
                    k if k != "all" else n, bundle=bundle, prompt_names=names,
                    images={"train": augmenting, "valid": splits["valid"], "test": splits["test"]}, device=device,
                    precision=precision, batch_size=cfg.batch_size, workers=cfg.workers, coop_steps=cfg.coop_steps,
                    lora_steps_per_shot=cfg.lora_steps_per_shot, curve=curve)
        results = run_methods(methods, task, protocols)
        if cfg.full_finetune:  # best validation epoch: the validation protocol only
            started = time.perf_counter()
            tuned = full_finetune(bundle, W, splits, augmenting, idx, cfg, device, precision, seed,
                                  run_dir / f"ft-{k}-{seed}")
            results["full-finetune"] = {"validation": tuned | {"seconds": time.perf_counter() - started}}
        for method, per_protocol in results.items():
            for protocol, r in per_protocol.items():
                rows.append({"method": method, "protocol": protocol, "shots": k, "seed": seed, **r})
        log.info("shots %s seed %d: %s", k, seed, {m: {p: round(100 * r["test"], 2) for p, r in v.items()}
                                                    for m, v in results.items()})

    summary = summarise(rows, shots, protocols)
    seconds = summarise([r for r in rows if "seconds" in r], shots, protocols, key="seconds")
    title = f"{bundle.name} ({bundle.pretrained}) on {kind}: test top-1 (%), mean ± std over seeds {seeds}"
    tables = []
    for protocol, per_method in summary.items():
        tables.append(f"## {protocol}\n\n" + accuracy_table(per_method, shots))
    text = "\n\n".join(tables)
    notes = {m: PROTOCOL_NOTES[m] for m in methods}
    write_text(run_dir / "results.md", f"# Few-shot ablation\n\n{title}\n\n{text}\n\nShots are training images per "
                                       f"class. validation: hyper-parameters and training length chosen on the "
                                       f"validation split; validation-free: fixed ones (results.json: "
                                       f"protocol_notes), the last step.\n")
    payload = {"benchmark": "fewshot", "environment": environment(device), "config": dataclasses.asdict(cfg),
               "model": bundle.name, "pretrained": bundle.pretrained,
               "pretrained_label": _weights_label(bundle.pretrained),
               "precision": precision, "dataset": data_tag, "classes": len(classes),
               "test_images": len(feats["test"][1]),
               "shots": [str(k) for k in shots], "seeds": seeds, "summary": summary, "seconds": seconds,
               "rows": rows, "grids": GRIDS, "fixed": FIXED, "protocol_notes": notes}
    write_json(run_dir / "results.json", payload)
    fig = accuracy_plot(summary, shots, f"{bundle.name} ({Path(bundle.pretrained).name}), {kind}")
    save_figure(fig, run_dir / "accuracy_vs_shots.png")
    with writer:
        writer.add_text("config", config_markdown(cfg))
        writer.add_text("results", text)
        for protocol, per_method in summary.items():
            for m, per_shot in per_method.items():
                for i, k in enumerate(shots):
                    writer.add_scalar(f"fewshot/{protocol}/{m}", per_shot[str(k)]["mean"], i)
        writer.add_image("fewshot/accuracy_vs_shots", figure_to_array(fig), 0, dataformats="HWC")
    print(f"{title}\n\n{text}")
    print(f"wrote {run_dir}/ (results.md, results.json, accuracy_vs_shots.png)")
    out = {"run_dir": run_dir, "summary": summary, "seconds": seconds, "rows": rows}
    if cfg.results:
        name = cfg.results if cfg.results != "auto" else result_stem(f"fewshot_{data_tag}", device,
                                                                      payload["environment"])
        out["result_file"] = write_result(name, payload)
        print(f"wrote {out['result_file']}")
    return out


def full_finetune(bundle, W, splits, augmenting, idx, cfg, device, precision, seed, run_dir) -> dict:
    """Fine-tune a copy of the image tower (head: the fixed zero-shot text classifier) on the k-shot
    images of ``augmenting`` (the training split with the augmenting transform); the best validation epoch is
    scored on test."""
    torch.manual_seed(seed)
    model = ZeroShotClassifier(copy.deepcopy(bundle.model), W.to(device)).to(device)
    bs = min(cfg.batch_size, len(idx))
    train_loader = DataLoader(LabeledSubset(augmenting, idx), batch_size=bs, shuffle=True, drop_last=True,
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
