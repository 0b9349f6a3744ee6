"""Explain a classifier's predictions: overlays, a predictions CSV, and faithfulness metrics.

    python experiments/explain.py --checkpoint runs/<run> --data synthetic --split test --method all
    python experiments/explain.py --checkpoint runs/<run>/checkpoints/best.pt --images my_photos/ --top-k 3
    python experiments/explain.py --clip ViT-B-32 --pretrained openai --data /path/to/sports100
    python experiments/explain.py --clip RN50 --pretrained openai --images my_photos/ --prompt "a person surfing"

The classifier is a train_vgg19.py or train.py run (--checkpoint; any torchvision or timm backbone, explained
at its family's default layer) or CLIP zero-shot (--clip): over the dataset's
classes, the 100 sports for a folder of images, or free-text prompts (--prompt, ';' between several).

Writes into --out: overlays/ (one PNG per image and class), grid.png (the first images, labelled),
predictions.csv (file, true class when known, top-k classes and scores) and metrics.json: accuracy,
the pointing game (with the standard tolerance, 15 px at 224 px, and strict) and energy-in-box per
method next to two baselines, random smooth maps and a map peaking at the image centre (when the
data has object boxes, like the synthetic set's boxes.csv), deletion/insertion AUC, Average Drop and
Increase in Confidence, sparseness and complexity, and the files skipped as unreadable. --road adds ROAD,
--robustness max/avg sensitivity and faithfulness correlation, --sanity the sanity checks (cascading
model-parameter randomisation, random logit; sanity.png and TensorBoard curves under tensorboard/).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm.auto import tqdm

from ..cam import EXPLAINERS, LAYOUTS, LayoutError, make_explainer, method_name
from ..cam.gradient_free import GradientFreeCAM
from ..cam.metrics import RunningMeans, score_explanations
from ..cam.overlay import overlay, save_grid
from ..cam.quality import score_quality
from ..cam.trust import explain_function, map_functions, sanity_report
from ..data import (
    OFFCENTRE_SPLIT,
    SPORTS100_CLASSES,
    ImageListDataset,
    denormalize,
    read_boxes,
    stratified_sample_indices,
    summarize_skipped,
)
from ..data.images import is_image_file
from ..data.transforms import eval_box
from ..hardware import autocast, resolve_precision
from ..models.prompts import prompt_names, prompt_sets
from ..models.zero_shot import ZeroShotClassifier
from ..plotting import save_figure
from ..results import caption, environment, table, write_result
from ..serialization import write_json
from .clip_data import load_clip_or_exit, open_split, resolve_data
from .config import (
    ANY,
    device_from_flag,
    option,
    parse_config,
    precision_option,
    refuse_inapplicable,
    setup_logging,
    timestamp,
)
from .runs import load_run

log = logging.getLogger("explain")


@dataclass
class ExplainConfig:
    checkpoint: str = option("", "a train_vgg19.py or train.py run folder (uses its best.pt) or a checkpoint file")
    clip: str = option("", "or an open_clip architecture to explain zero-shot (e.g. ViT-B-32, RN50)")
    pretrained: str = option("openai", "--clip weights: a tag, a local checkpoint file, or 'none'",
                             applies=("clip", ANY))
    prompts: str = option("sports", "--clip: prompt set of the class names", ("single", "sports", "imagenet"),
                          applies=("clip", ANY))
    prompt: str = option("", "--clip: explain free-text prompts instead of class names (';' between several)",
                         applies=("clip", ANY))
    data: str = option("", "100-Sports-layout folder or 'synthetic' (the demo's set); use with --split")
    split: str = option("test", f"split of --data ({OFFCENTRE_SPLIT}: the synthetic set's objects placed away from the "
                                f"centre, where always pointing at the centre scores 0)",
                        ("train", "valid", "test", OFFCENTRE_SPLIT), applies=("data", ANY))
    images: str = option("", "a folder of images (searched recursively) instead of --data")
    method: str = option("gradcam", f"one of {', '.join(EXPLAINERS)}, a comma list, or 'all' (overlays use the "
                                    f"first; methods that refuse the model, like CAM without its head, are left out)")
    samples: int = option(0, "noisy/scaled samples of SS-CAM, IS-CAM and SmoothGrad-CAM++ (0: their defaults, 35, 10 "
                             "and 4)", bounds=">=0")
    limit: int = option(0, "explain N images drawn evenly from the classes, seeded by --seed (0: all)", bounds=">=0")
    cam_batch: int = option(0, "forwards per batch of the gradient-free methods (masked images, ablations); "
                               "0: each method's choice for the device", bounds=">=0")
    results: str = option("", "also write the report to benchmarks/results/<NAME>.json, rendered by "
                              "benchmarks/tables.py (e.g. explain_methods_demo_cpu_avx2)")
    top_k: int = option(1, "explain the k most likely classes of each image", bounds=">=1")
    layer: str = option("", "target layer(s), dotted names, comma-separated (default: the model family's usual)")
    layout: str = option("auto", "how the target layer's output holds channels and positions: BCHW (maps), BHWC "
                                 "(channels-last maps, e.g. Swin), BND/NBD (tokens, batch or sequence first); auto: "
                                 "resolved from the model, or refused with this flag's name", ("auto", *LAYOUTS))
    prefix_tokens: int = option(-1, "tokens before the patch grid (class, distillation, registers) for a token "
                                    "layout (-1: the model's own count)", bounds=">=-1")
    pointing_tolerance: float = option(-1.0, "pointing-game tolerance in pixels (-1: the standard 15 px at 224 px, "
                                             "scaled to the input size)", bounds=">=-1")
    out: str = option("", "output folder (default: outputs/explain-<time>)")
    batch_size: int = option(32, "images per batch", bounds=">=1")
    overlays: int = option(-1, "write overlay PNGs for at most this many images (-1: all)", bounds=">=-1")
    deletion_steps: int = option(16, "steps of the deletion/insertion curves (0: skip those metrics)", bounds=">=0")
    road: bool = option(False, "also ROAD (most/least relevant first, combined; 8 linear-system solves per image "
                               "and method: slow on a CPU)")
    robustness: bool = option(False, "also max/avg sensitivity (each method's maps of noisy copies of the images) "
                                     "and faithfulness correlation (forwards of randomly masked images)")
    sensitivity_samples: int = option(10, "noisy copies per image of max/avg sensitivity (each one more call of every "
                                          "method)", bounds=">=1", applies=("robustness", (True,)))
    sanity: bool = option(False, "also the sanity checks (sportsnet.cam.sanity): cascading model-parameter "
                                 "randomisation and the random-logit test, on the first --sanity-images images; "
                                 "columns, flags, sanity.png and TensorBoard curves")
    sanity_images: int = option(32, "images of the sanity checks", bounds=">=1", applies=("sanity", (True,)))
    sanity_steps: int = option(5, "randomisation steps, log-spaced from the top layer to the whole model",
                               bounds=">=2", applies=("sanity", (True,)))
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    precision: str = precision_option()
    seed: int = option(0, "seed of the --limit sample, the random-map baseline and the checks' draws")
    progress: bool = option(True, "progress bar")


@dataclass
class Subject:
    """What is explained: the model and how its inputs are made."""

    model: torch.nn.Module
    classes: list[str]
    transform: object
    mean: tuple
    std: tuple
    size: int
    resize: int
    name: str


def run_subject(cfg: ExplainConfig, device) -> tuple[Subject, object]:
    """A train_vgg19.py or train.py run: its model, transforms and image statistics."""
    model, train_cfg, classes = load_run(cfg.checkpoint, device)
    size, resize = train_cfg.image_size, round(train_cfg.image_size * train_cfg.eval_resize_ratio)
    mean, std = train_cfg.image_stats()
    subject = Subject(model, classes, train_cfg.transforms(False), mean, std, size, resize, Path(cfg.checkpoint).name)
    return subject, train_cfg


def clip_subject(cfg: ExplainConfig, device, classes: list[str], kind: str) -> Subject:
    bundle = load_clip_or_exit(cfg.clip, cfg.pretrained, device)
    if cfg.prompt:
        texts = [t.strip() for t in cfg.prompt.split(";") if t.strip()]
        model = ZeroShotClassifier.from_names(bundle, texts, ["{}"])
    else:
        model = ZeroShotClassifier.from_names(bundle, prompt_names(classes, kind), prompt_sets()[cfg.prompts],
                                              labels=classes)
    return Subject(model.to(device).eval(), list(model.classes), bundle.transforms(False), bundle.mean, bundle.std,
                   bundle.image_size, bundle.image_size, f"{bundle.name} ({bundle.pretrained})")


def open_images(cfg: ExplainConfig, transform, classes) -> ImageListDataset:
    root = Path(cfg.images)
    if not root.is_dir():
        raise SystemExit(f"error: --images {cfg.images} is not a folder")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise SystemExit(f"error: no image files under {cfg.images}")
    ds = ImageListDataset(root, [(f, -1) for f in files], list(classes), transform)
    ds.verify()
    return ds


def open_data(cfg: ExplainConfig, synthetic_root: str | None) -> tuple[str, Path]:
    """``(kind, root)`` of --data; 'synthetic' is the run's own (already written) set, or the CLIP
    scripts' set."""
    if cfg.data == "synthetic" and synthetic_root:
        return "sports100", Path(synthetic_root)
    kind, root, _ = resolve_data(cfg.data)
    return kind, root


def attach_boxes(ds: ImageListDataset, boxes_csv: Path, size: int, resize: int) -> torch.Tensor:
    from PIL import Image

    boxes = read_boxes(boxes_csv.parent)
    rows = []
    for path, _ in ds.samples:
        rel = ds.relpath(path)
        if rel not in boxes:
            raise SystemExit(f"error: {boxes_csv} has no box for {rel}")
        with Image.open(path) as im:
            rows.append(eval_box(boxes[rel], im.size, size, resize))
    return torch.tensor(rows)


class Indexed(torch.utils.data.Dataset):
    """Adds the sample index, so boxes and file names follow the batches."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i


def _is_alias(method: str) -> bool:
    try:
        method_name(method)
    except ValueError:
        return False
    return True


def method_options(method: str, cfg: ExplainConfig) -> dict:
    """The explainer options ``explain.py``'s flags set for ``method``."""
    cls = EXPLAINERS[method]
    options = {}
    if issubclass(cls, GradientFreeCAM):
        options.update(precision=cfg.precision, batch_size=cfg.cam_batch or None)
    if cfg.samples and method in ("sscam", "iscam", "smoothgradcam++"):
        options["num_samples"] = cfg.samples
    if cfg.layout != "auto":
        options["layout"] = cfg.layout
    if cfg.prefix_tokens >= 0:
        options["prefix_tokens"] = cfg.prefix_tokens
    return options


def explain_under_autocast(method: str, cfg: ExplainConfig, layers, device, precision: str):
    """:func:`sportsnet.cam.trust.explain_function` of ``method`` with this program's options and precision:
    what the sanity checks call on the trained model and on its randomised copies."""
    inner = explain_function(method, layers, **method_options(method, cfg))

    def explain(model, images, classes):
        with autocast(device, precision):
            return inner(model, images, classes)

    return explain


def run_sanity(cfg: ExplainConfig, model, methods: list[str], layers, images: torch.Tensor, classes: torch.Tensor,
               num_classes: int, device, precision: str, out_dir: Path) -> tuple[dict, dict[str, float]]:
    """The sanity checks on ``images`` (their explained ``classes``): the report's ``sanity`` entry, the
    metrics' columns, sanity.png and TensorBoard curves in ``out_dir``."""
    explainers = {m: explain_under_autocast(m, cfg, layers, device, precision) for m in methods}
    report, metrics = sanity_report(model, explainers, images, classes, num_classes, steps=cfg.sanity_steps,
                                    seed=cfg.seed)
    fig = sanity_figure(report)
    save_figure(fig, out_dir / "sanity.png")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(out_dir / "tensorboard")) as writer:
        for kind in ("spearman", "ssim"):
            for m, values in report[kind].items():
                for step, value in enumerate(values):
                    writer.add_scalar(f"sanity/{kind}/{m}", value, step)
        writer.add_figure("sanity/randomisation", fig)
    for m, why in report["flags"].items():
        log.warning("explain: %s fails the sanity checks: %s", m, "; ".join(why))
    return report, metrics


def sanity_figure(report: dict):
    """Similarity of each method's maps to the trained model's against how much of the model is randomised."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    labels = [str(s["units"]) if s["units"] < s["of"] else f"all {s['of']}" for s in report["steps"]]
    colours = matplotlib.colormaps["tab20"].colors
    for ax, kind, title in zip(fig.subplots(1, 2), ("spearman", "ssim"), ("Spearman rank correlation", "SSIM")):
        for i, (m, values) in enumerate(report[kind].items()):  # 20 colours x 3 markers: no two methods alike
            ax.plot(range(len(values)), values, marker="osD"[i // 20 % 3], color=colours[i % 20], label=m,
                    linestyle="--" if m in report["flags"] else "-")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("layers and parameters randomised, from the output down")
        ax.set_ylabel(title)
        ax.set_ylim(-0.2, 1.05)
        if kind == "spearman":
            ax.axhline(report["thresholds"]["randomisation_spearman"], color="grey", linewidth=0.8)
    fig.axes[-1].legend(fontsize=6, ncol=2, loc="upper right")
    fig.suptitle(f"Cascading randomisation on {report['images']} images (dashed: flagged)")
    fig.tight_layout()
    return fig


#: The columns of the methods table: (metric key in metrics.json, header, format).
TABLE_COLUMNS = [("pointing_game", "pointing game", "{:.1%}"), ("pointing_game_strict", "strict", "{:.1%}"),
                 ("energy_in_box", "energy in box", "{:.2f}"), ("deletion_auc", "deletion AUC", "{:.3f}"),
                 ("insertion_auc", "insertion AUC", "{:.3f}"), ("road_combined", "ROAD combined", "{:.3f}"),
                 ("faithfulness_correlation", "faithfulness corr.", "{:.2f}"), ("sparseness", "Gini", "{:.2f}"),
                 ("complexity", "entropy", "{:.2f}"), ("max_sensitivity", "max sens.", "{:.3f}"),
                 ("avg_sensitivity", "avg sens.", "{:.3f}"), ("sanity_spearman", "randomisation: Spearman", "{:.2f}"),
                 ("sanity_ssim", "randomisation: SSIM", "{:.2f}"), ("random_logit_ssim", "random logit: SSIM",
                                                                    "{:.2f}"),
                 ("seconds_per_image", "s / image", "{:.3f}")]


def sanity_summary(p: dict) -> str:
    """The sanity checks' verdict in words, from an ``explain.py --sanity`` report."""
    sanity, metrics = p["sanity"], p["metrics"]
    passed = [m for m in p["methods"] if m not in sanity["flags"]]
    failed = [f"{m} ({'; '.join(why)})" for m, why in sanity["flags"].items()]
    rho = sorted(p["methods"], key=lambda m: metrics[f"sanity_spearman/{m}"])
    steps = sanity["steps"]
    return (f"Sanity checks on {sanity['images']} of the images, the model randomised from the output down in "
            f"{len(steps)} steps ({', '.join(str(s['units']) for s in steps)} of its {steps[-1]['of']} layers and "
            f"parameters): the maps' Spearman correlation with the trained model's, averaged over the steps, ranges "
            f"from {metrics[f'sanity_spearman/{rho[0]}']:.2f} ({rho[0]}) to "
            f"{metrics[f'sanity_spearman/{rho[-1]}']:.2f} ({rho[-1]}). Pass ({len(passed)}): "
            f"{', '.join(passed) or 'none'}. Fail ({len(failed)}): {'; '.join(failed) or 'none'}. A method fails at "
            f"a mean Spearman correlation of {sanity['thresholds']['randomisation_spearman']} or more, or when its "
            f"maps of a random other class have a mean SSIM of {sanity['thresholds']['random_logit_ssim']} or more "
            f"with the explained class's (sportsnet.cam.sanity).")


def methods_table(p: dict) -> str:
    """One row per method (and the baselines) from an ``explain.py --results`` file (benchmarks/tables.py)."""
    metrics = p["metrics"]
    names = list(p["methods"]) + [b for b in ("random", "center") if f"pointing_game/{b}" in metrics]
    columns = [c for c in TABLE_COLUMNS if any(f"{c[0]}/{n}" in metrics for n in names)]
    sanity = p.get("sanity")
    rows = []
    for n in names:
        label = {"random": "random smooth maps", "center": "always the centre"}.get(n, n)
        row = [label] + [fmt.format(metrics[f"{key}/{n}"]) if f"{key}/{n}" in metrics else "" for key, _, fmt
                         in columns]
        if sanity:
            row.append("" if n not in p["methods"] else "**fails**" if n in sanity["flags"] else "passes")
        rows.append(row)
    headers = ["maps"] + [header for _, header, _ in columns] + (["sanity"] if sanity else [])
    split = f" ({p['split']} split)" if p.get("split") else ""
    if "accuracy" in metrics:
        split += f", top-1 accuracy {metrics['accuracy']:.1%}"
    text = (f"{p['model']}, {p['images']} images{split}, target layer {', '.join(p['target_layer'])}, "
            f"{p['precision']}; {caption(p['environment'])}, torch {p['environment']['torch']}, "
            f"{p['environment']['time'][:10]}.\n\n" + table(rows, headers))
    if sanity:
        text += "\n\n" + sanity_summary(p)
    if p.get("refused_methods"):
        reasons: dict[str, list[str]] = {}
        for m, why in p["refused_methods"].items():
            reasons.setdefault(why.split(";")[0], []).append(m)
        text += "\n\nLeft out (they refuse this model): " + "; ".join(
            f"{', '.join(ms)} ({why})" for why, ms in reasons.items()) + "."
    return text


def main(argv=None) -> dict:
    setup_logging()
    cfg, given = parse_config(ExplainConfig, argv, ExplainConfig(), __doc__)
    if bool(cfg.checkpoint) == bool(cfg.clip):
        raise SystemExit("error: give --checkpoint (a train_vgg19 run) or --clip (an open_clip architecture)")
    refuse_inapplicable(cfg, given)
    if bool(cfg.images) == bool(cfg.data):
        raise SystemExit("error: give exactly one of --data (with --split) or --images")
    methods = list(EXPLAINERS) if cfg.method == "all" else [m.strip() for m in cfg.method.split(",")]
    unknown = [m for m in methods if m not in EXPLAINERS and not _is_alias(m)]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {unknown}; expected {', '.join(EXPLAINERS)}, a class name such "
                         f"as GradCAMPlusPlus, or 'all'")
    methods = [method_name(m) for m in methods]
    device = device_from_flag(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.checkpoint:
        subject, train_cfg = run_subject(cfg, device)
        kind, root = open_data(cfg, train_cfg.synthetic_root) if cfg.data else (None, None)
        ds = open_images(cfg, subject.transform, subject.classes) if cfg.images else \
            open_split(kind, root, cfg.split, subject.transform)
        if cfg.data and ds.classes != subject.classes:
            raise SystemExit(f"error: the data's classes ({len(ds.classes)}, e.g. {ds.classes[:3]}) are not the "
                             f"checkpoint's ({len(subject.classes)}, e.g. {subject.classes[:3]})")
    else:
        kind, root = open_data(cfg, None) if cfg.data else ("sports100", None)
        probe = open_split(kind, root, cfg.split, None) if cfg.data else None
        subject = clip_subject(cfg, device, probe.classes if probe else SPORTS100_CLASSES, kind)
        ds = open_images(cfg, subject.transform, subject.classes) if cfg.images else probe
        ds.transform = subject.transform
    model, classes, size = subject.model, subject.classes, subject.size
    if cfg.top_k > len(classes):
        raise SystemExit(f"error: --top-k {cfg.top_k} exceeds the model's {len(classes)} classes")
    if cfg.limit:  # an even spread over the classes (the samples are sorted by class)
        ds.samples = [ds.samples[i] for i in stratified_sample_indices(ds.samples, cfg.limit, cfg.seed)]
    boxes_csv = root / "boxes.csv" if cfg.data and (root / "boxes.csv").is_file() else None
    boxes = attach_boxes(ds, boxes_csv, size, subject.resize) if boxes_csv is not None else None
    out_dir = Path(cfg.out or f"outputs/explain-{timestamp()}")
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    labelled = bool(ds.samples) and ds.samples[0][1] >= 0 and not cfg.prompt

    layers = [x.strip() for x in cfg.layer.split(",") if x.strip()] or None
    cams, refused = {}, {}
    for m in methods:
        try:
            cams[m] = make_explainer(model, m, target_layer=layers, **method_options(m, cfg))
        except ValueError as e:  # with --method all, a method that cannot read this model is left out
            if cfg.method != "all" or not EXPLAINERS[m].transformer_only:
                raise SystemExit(f"error: {e}") from None
            refused[m] = str(e)
    methods = [m for m in methods if m in cams]
    # Zhang et al.'s pointing game counts a hit within 15 px of the box at 224 px.
    tolerance = round(15 * size / 224) if cfg.pointing_tolerance < 0 else cfg.pointing_tolerance
    gen = torch.Generator().manual_seed(cfg.seed)
    means = RunningMeans()
    rows, grid = [], None
    sanity_images: list[torch.Tensor] = []
    sanity_classes: list[torch.Tensor] = []
    loader = DataLoader(Indexed(ds), batch_size=cfg.batch_size, num_workers=0)
    for images, labels, idx in tqdm(loader, desc="explain", disable=not cfg.progress):
        images = images.to(device)
        with autocast(device, precision):  # the explanations and the metrics' forwards
            outs = {}
            for m in list(methods):
                start = time.perf_counter()
                try:
                    outs[m] = cams[m](images, top_k=cfg.top_k)
                except LayoutError as e:  # the layer, not the method: no method can read it
                    raise SystemExit(f"error: {e} (here: --layout, --prefix-tokens)") from None
                except ValueError as e:  # e.g. CAM on a model without a pooling + linear head
                    if cfg.method != "all" or len(methods) == 1:
                        raise SystemExit(f"error: {m}: {e}") from None
                    refused[m] = str(e)
                    methods.remove(m)
                    log.warning("explain: %s left out: %s", m, e)
                    continue
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                means.add(f"seconds_per_image/{m}", torch.full((len(images),), (time.perf_counter() - start)
                                                               / len(images)))
            first = outs[methods[0]]
            pred = first.classes[:, 0].cpu()
            if labelled:
                means.add("accuracy", pred == labels)
            # Each method's maps explain its own top-1 class (the methods agree on it: the same forward).
            maps = {m: o.maps[:, 0] for m, o in outs.items()}
            explained = first.classes[:, 0]
            scores = score_explanations(model, images, maps, explained,
                                        boxes[idx].to(device) if boxes is not None else None, tolerance=tolerance,
                                        deletion_steps=cfg.deletion_steps, generator=gen, road=cfg.road)
            means.update(scores)
            means.update(score_quality(model, images, maps, explained, generator=gen, faithfulness=cfg.robustness,
                                       explainers=map_functions({m: cams[m] for m in outs}) if cfg.robustness
                                       else None, samples=cfg.sensitivity_samples))
        need = cfg.sanity_images - sum(len(x) for x in sanity_images)
        if cfg.sanity and need > 0:
            sanity_images.append(images[:need])
            sanity_classes.append(explained[:need])
        pictures = denormalize(images, subject.mean, subject.std)
        for j, i in enumerate(idx.tolist()):
            name = ds.relpath(ds.samples[i][0])
            row = {"file": name, "true": classes[int(labels[j])] if labelled else ""}
            for k in range(cfg.top_k):
                row[f"top{k + 1}"] = classes[int(first.classes[j, k])]
                row[f"score{k + 1}"] = round(float(first.scores[j, k]), 6)
            rows.append(row)
            if cfg.overlays < 0 or i < cfg.overlays:
                for k in range(cfg.top_k):
                    pic = overlay(pictures[j:j + 1], first.maps[j:j + 1, k])[0]
                    target = out_dir / "overlays" / f"{Path(name).with_suffix('')}_top{k + 1}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    save_image(pic, target)
        if grid is None:
            n = min(16, len(idx))
            grid = save_grid(out_dir / "grid.png", pictures[:n], first.maps[:n, 0],
                             true_names=[classes[int(v)] for v in labels[:n]] if labelled else None,
                             pred_names=[classes[int(v)] for v in pred[:n]], scores=first.scores[:n, 0].tolist(),
                             title=f"{methods[0]} on {subject.name}")

    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["file"])
        writer.writeheader()
        writer.writerows(rows)
    metrics = means.means()
    sanity = None
    if cfg.sanity and methods:
        sanity, columns = run_sanity(cfg, model, methods, layers, torch.cat(sanity_images), torch.cat(sanity_classes),
                                     len(classes), device, precision, out_dir)
        metrics.update(columns)
    report = {"model": subject.name, "checkpoint": cfg.checkpoint, "images": len(ds), "methods": methods,
              "split": cfg.split if cfg.data else None, "sanity": sanity,
              "target_layer": cams[methods[0]].target_layers,
              "pointing_tolerance_px": tolerance if boxes is not None else None, "precision": precision,
              "metrics": metrics, "refused_methods": refused, "skipped": summarize_skipped(ds.skipped),
              "skipped_files": [dataclasses.asdict(s) for s in ds.skipped],
              "boxes": boxes_csv is not None, "config": dataclasses.asdict(cfg), "environment": environment(device)}
    write_json(out_dir / "metrics.json", report)
    if cfg.results:
        path = write_result(cfg.results, {"benchmark": "explain_methods", **report})
        print(f"wrote {path}")
    if ds.skipped:
        print(f"skipped {len(ds.skipped)} unreadable file(s): {summarize_skipped(ds.skipped)}")
    for key, value in metrics.items():
        print(f"{key:40s} {value:.4f}")
    print(f"wrote {out_dir}/ (overlays/, grid.png, predictions.csv, metrics.json)")
    return report


if __name__ == "__main__":
    main()
