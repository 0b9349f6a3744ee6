"""Train the seeds' VGG19 on 100-Sports (or the offline synthetic set) and write a test report.

    python experiments/train_vgg19.py --data /path/to/sports100          # reduce256-two-phase, ImageNet weights
    python experiments/train_vgg19.py --data /path --recipe frozen-bn-head --grayscale
    python experiments/train_vgg19.py                                    # no dataset: the offline demo
    python experiments/train_vgg19.py --resume runs/<name>               # continue an interrupted run

Everything lands in runs/<name>/: TensorBoard events (tensorboard --logdir runs; a Grad-CAM grid of
fixed validation images every epoch), checkpoints/last.pt and best.pt, config.json, test_report.{json,md}
with the confusion matrix and per-class PNGs, and gradcam_grid.png from the best checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from ..cam import GradCAM
from ..cam.overlay import grid_figure
from ..data import SYNTHETIC_SETS, Sports100, build_transforms, denormalize, make_synthetic_sports, summarize_skipped
from ..data.batch_aug import collate_channels_last
from ..data.cache import DecodedImages, one_size
from ..data.images import UnreadableImageError
from ..engine import FitOptions, Phase, describe_mismatch, evaluate, fit, load_checkpoint, write_report
from ..engine.distributed import ShardSampler, barrier, broadcast_object, is_main, shutdown, world
from ..engine.loop import to_device
from ..engine.optim import OPTIMIZERS
from ..hardware import resolve_channels_last, resolve_precision
from ..models import RECIPE_ALIASES, RECIPES, canonical_recipe, load_imagenet_weights, recipe_phases, sports_vgg19
from ..models.weights import resolve_weights_file
from ..plotting import figure_to_array, save_figure
from .config import (
    checkpoint_path,
    config_markdown,
    fit_exits,
    new_run_dir,
    option,
    parse_config,
    precision_option,
    resume_config,
    run_folder,
    saved_config,
    setup_logging,
    timestamp,
    training_device,
    write_json,
)

log = logging.getLogger("train_vgg19")
DEFAULT_DATA = "data/sports100"
DEMO_SET = SYNTHETIC_SETS["vgg-demo"]
# Flags that may change when resuming; everything else comes from the checkpoint's config.
RUNTIME_FLAGS = {"resume", "workers", "progress", "device", "log_every", "data_path", "cache_dir"}


@dataclass
class TrainConfig:
    data: str = option("", "100-Sports folder (train/ valid/ test/ [sports.csv]), or 'synthetic'; empty: "
                           f"{DEFAULT_DATA} if it exists, else the offline demo")
    out: str = option("runs", "folder for run folders")
    name: str = option("", "run folder name (default: vgg19-<recipe>-<data>-<time>)")
    resume: str = option("", "run folder or checkpoint to continue with its saved config")
    recipe: str = option("reduce256-two-phase", "frozen-bn-head: the first 15 conv-base layers frozen, a "
                         "Dropout/Linear/BatchNorm1d/ReLU head; reduce256-two-phase: a 1x1 512->256 reduction, "
                         "trained on a frozen base, then everything (old names seed000 / seed001 accepted)",
                         (*RECIPES, *RECIPE_ALIASES))
    weights: str = option("imagenet", "'imagenet' (hub cache / download), 'none', or a path to vgg19-dcbb9e9d.pth")
    width: float = option(1.0, "scales every conv and hidden width (1.0 = real VGG19)")
    batch_norm: bool = option(False, "VGG19-BN conv base")
    grayscale: bool = option(False, "one-channel stem (pretrained RGB kernels summed) and grayscale input")
    freeze_layers: int = option(-1, "freeze the first N modules of features (-1: recipe default, 15 / 0)")
    dropout: float = option(0.5, "dropout before each Linear layer of the head")
    hidden: int = option(1024, "hidden width of the head (scaled by --width)")
    pool: int = option(7, "adaptive pool side before the head: 7 as in the seeds, 1 = global average pooling")
    image_size: int = option(224, "training and evaluation resolution in pixels")
    crop_scale: float = option(0.25, "smallest area fraction of the random resized crop")
    eval_resize_ratio: float = option(1.0, "eval: resize to size*ratio, centre-crop size (100-Sports is 224 px)")
    epochs: int = option(10, "epochs of frozen-bn-head's single phase")
    phase1_epochs: int = option(3, "reduce256-two-phase: epochs training only the new layers on the frozen base")
    phase2_epochs: int = option(7, "reduce256-two-phase: epochs fine-tuning everything")
    phase2_lr_factor: float = option(0.1, "reduce256-two-phase: learning-rate factor of phase 2")
    optimizer: str = option("adamw", "optimizer", OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(1e-4, "weight decay")
    momentum: float = option(0.9, "SGD momentum")
    warmup_epochs: float = option(0.5, "linear warmup at the start of each phase, in epochs")
    min_lr_ratio: float = option(0.01, "cosine schedule ends at lr * this")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing")
    grad_clip: float = option(0.0, "clip the gradient norm to this (0: off)")
    batch_size: int = option(32, "training batch size (evaluation uses twice this)")
    workers: int = option(-1, "data-loader workers (-1: auto)")
    precision: str = precision_option()
    channels_last: bool | None = option(None, "channels-last model and inputs (auto: where this hardware's conv "
                                              "kernels are faster with it; the choice is logged)", switch=True)
    compile: bool = option(False, "torch.compile the model")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    seed: int = option(0, "seed of initialisation, data order and augmentation")
    log_every: int = option(20, "steps between progress/TensorBoard updates (each is a host sync)")
    gradcam_images: int = option(16, "validation images in the Grad-CAM grid logged every epoch (0: none)")
    verify_images: bool = option(True, "decode every image once up front; report and drop unreadable ones")
    strict: bool = option(False, "stop at the first unreadable image instead of skipping it")
    data_path: str = option("auto", "cache: decode every image once into a memory-mapped uint8 file and augment "
                            "whole batches on the training device (the same augmentation distribution, faster); "
                            "plain: decode and augment image by image in the workers every epoch; auto: cache "
                            "where a split's images share one size", ("auto", "cache", "plain"))
    cache_dir: str = option("data/cache/decoded", "folder of the decoded-image caches")
    progress: bool = option(True, "tqdm progress bars")
    synthetic_classes: int = option(DEMO_SET["num_classes"], "synthetic set: number of classes")
    synthetic_train_per_class: int = option(DEMO_SET["train_per_class"], "synthetic set: training images per class")
    synthetic_eval_per_class: int = option(DEMO_SET["eval_per_class"], "synthetic set: images per class in valid "
                                                                       "and in test")
    synthetic_size: int = option(DEMO_SET["size"], "synthetic set: image side in pixels")
    synthetic_root: str = option(DEMO_SET["root"], "where the synthetic set is written (and reused)")


# The offline demo: an eighth-width VGG19-BN from scratch on the synthetic set at 96 px, with a global-
# average-pooling head (pool=1). Explicit flags win. Why not the seeds' 7x7 head: it has weights per
# position, and Grad-CAM's channel weights (gradients averaged over positions) then lose where the
# evidence is: on the synthetic test split its maps pointed at the object 4% of the time (random maps:
# 10%) although the model used nothing but the object. With pool=1 Grad-CAM is exactly CAM, and 96 px
# gives the last conv block 6x6 maps (64 px: 4x4, too coarse to point with). Sized for a first run of
# at most 10 minutes on a 2-core CPU in fp32 (the README has the measured times): width 1/8 trains more
# than twice as fast as 1/4 and its maps point as well, and without dropout and label smoothing it
# reaches in 12 epochs what took 30 with them. NCHW, not channels-last: this narrow BatchNorm net
# trains faster in NCHW on CPUs with and without native bf16 (plain VGG19 is faster channels-last).
DEMO = dict(data="synthetic", weights="none", width=0.125, batch_norm=True, image_size=DEMO_SET["size"],
            pool=1, crop_scale=0.6, phase1_epochs=0, phase2_epochs=12, phase2_lr_factor=1.0, lr=2e-3,
            batch_size=32, dropout=0.0, label_smoothing=0.0, hidden=512, warmup_epochs=0.5, channels_last=False)


def load_run(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig, list[str]]:
    """The model of a training run (a run folder -> its best checkpoint, or a checkpoint file), its config
    and class names; weights loaded with weights_only=True, model in eval mode."""
    ckpt_path = checkpoint_path(path, "best.pt")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    cfg, classes = saved_config(TrainConfig, ckpt["config"]), list(ckpt["classes"])
    model = build_model(cfg, len(classes))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise SystemExit(f"error: {ckpt_path} does not fit the model its config describes "
                         f"({model.arch}, {len(classes)} classes): {describe_mismatch(model, ckpt['model'])}") from None
    return model.to(device).eval(), cfg, classes


def resolve_config(argv=None) -> tuple[TrainConfig, dict | None]:
    """Flags -> config; the demo's defaults when there is no dataset; the saved config on --resume."""
    cfg, given = parse_config(TrainConfig, argv, TrainConfig(), __doc__)
    if cfg.resume:
        return resume_config(TrainConfig, cfg, given, RUNTIME_FLAGS)
    cfg = dataclasses.replace(cfg, recipe=canonical_recipe(cfg.recipe))  # run names and configs use the new names
    if not cfg.data:
        if (Path(DEFAULT_DATA) / "train").is_dir():
            cfg = dataclasses.replace(cfg, data=DEFAULT_DATA)
        else:
            print(f"no dataset at {DEFAULT_DATA} (pass --data PATH to use 100-Sports): running the offline demo "
                  f"on the synthetic set", flush=True)
            cfg = dataclasses.replace(cfg, data="synthetic")
    if cfg.data == "synthetic":
        cfg = dataclasses.replace(cfg, **{k: v for k, v in DEMO.items() if k not in given})
    return cfg, None


def check_config(cfg: TrainConfig) -> None:
    """One-line errors before any heavy work."""
    problems = []
    if cfg.batch_size < 1:
        problems.append(f"--batch-size {cfg.batch_size} must be >= 1")
    if cfg.gradcam_images < 0:
        problems.append(f"--gradcam-images {cfg.gradcam_images} must be >= 0")
    if cfg.image_size < 32:
        problems.append(f"--image-size {cfg.image_size} must be >= 32 (VGG halves it 5 times)")
    if not 0 < cfg.crop_scale <= 1:
        problems.append(f"--crop-scale {cfg.crop_scale} must be in (0, 1]")
    if cfg.weights != "none" and cfg.width != 1.0:
        problems.append(f"--weights {cfg.weights} needs --width 1.0 (got {cfg.width}); use --weights none for "
                        f"narrow models")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    with torch.device("meta"):  # a free dry run: the model and phase plan accept these flags
        try:
            build_phases(cfg, build_model(cfg, num_classes=2))
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    return sports_vgg19(cfg.recipe, num_classes, width=cfg.width, batch_norm=cfg.batch_norm,
                        grayscale=cfg.grayscale, dropout=cfg.dropout, hidden=cfg.hidden, pool=cfg.pool)


def build_phases(cfg: TrainConfig, model: nn.Module) -> list[Phase]:
    return [Phase(**p) for p in recipe_phases(
        model, lr=cfg.lr, epochs=cfg.epochs, freeze_layers=None if cfg.freeze_layers < 0 else cfg.freeze_layers,
        phase1_epochs=cfg.phase1_epochs, phase2_epochs=cfg.phase2_epochs, phase2_lr_factor=cfg.phase2_lr_factor)]


def build_data(cfg: TrainConfig):
    if cfg.data == "synthetic":
        root = make_synthetic_sports(cfg.synthetic_root, num_classes=cfg.synthetic_classes,
                                     train_per_class=cfg.synthetic_train_per_class,
                                     eval_per_class=cfg.synthetic_eval_per_class, size=cfg.synthetic_size,
                                     seed=cfg.seed)
    else:
        root = Path(cfg.data)
    kw = {True: dict(grayscale=cfg.grayscale, scale=(cfg.crop_scale, 1.0)),
          False: dict(grayscale=cfg.grayscale, resize_ratio=cfg.eval_resize_ratio)}
    splits = {s: Sports100(root, s, transform=build_transforms(s == "train", cfg.image_size, **kw[s == "train"]),
                           strict=cfg.strict) for s in ("train", "valid", "test")}
    if cfg.verify_images:
        for ds in splits.values():
            try:
                ds.verify()
            except UnreadableImageError as e:  # --strict
                raise SystemExit(f"error: {e} (--strict stops at the first unreadable image)") from None
    on_device = {}  # split -> the batch transform that replaces its per-image one (cached splits)
    if cfg.data_path != "plain":
        for s, ds in splits.items():
            ok, sizes = one_size([p for p, _ in ds.samples])
            if ok:
                ds.transform = None  # raw uint8 items; augmented by the batch on the training device
                splits[s] = DecodedImages(ds, cfg.cache_dir)
                on_device[s] = build_transforms(s == "train", cfg.image_size, batched=True, **kw[s == "train"])
            elif cfg.data_path == "cache":
                raise SystemExit(f"error: --data-path cache needs the {s} images to share one size; found "
                                 f"{dict(sizes.most_common(5))} (use --data-path plain or auto)")
            else:
                log.info("%s: images of several sizes %s: decoding from disk every epoch", s,
                         dict(sizes.most_common(3)))
    skipped = {s: summarize_skipped(ds.skipped) for s, ds in splits.items() if ds.skipped}
    if skipped:
        log.warning("skipped files: %s", skipped)
    return root, splits, skipped, on_device


def loaders(cfg: TrainConfig, splits, on_device: dict, device: torch.device):
    def common(s: str) -> dict:
        if cfg.workers >= 0:
            workers = cfg.workers
        elif device.type == "cuda":
            workers = min(8, torch.get_num_threads())
        else:  # CPU training: a cached split is a slice of a memory map, cheaper in-process than shipped by a worker
            workers = 0 if s in on_device else 1
        return dict(num_workers=workers, pin_memory=device.type == "cuda",
                    collate_fn=collate_channels_last if s in on_device else None)

    # Workers are recreated every epoch (not persistent): their RNG seeds then come from the loader's
    # generator, which fit() reseeds per epoch and rank, so a resumed run augments exactly like an
    # uninterrupted one, and ranks augment apart.
    if world()[1] > 1:  # torchrun: --batch-size is per process; evaluation shards add up to the whole split
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(splits["train"], shuffle=True, seed=cfg.seed, drop_last=True)
        train = DataLoader(splits["train"], batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                           generator=torch.Generator(), **common("train"))
        val, test = (DataLoader(splits[s], batch_size=2 * cfg.batch_size, sampler=ShardSampler(splits[s]),
                                **common(s)) for s in ("valid", "test"))
        return train, val, test
    train = DataLoader(splits["train"], batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                       generator=torch.Generator(), **common("train"))
    val = DataLoader(splits["valid"], batch_size=2 * cfg.batch_size, **common("valid"))
    test = DataLoader(splits["test"], batch_size=2 * cfg.batch_size, **common("test"))
    return train, val, test


def gradcam_grid(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: list[str], title: str):
    """Grad-CAM of the predicted class over a fixed set of images, as a labelled figure."""
    out = GradCAM(model)(images)
    pred = out.classes[:, 0].tolist()
    return grid_figure(denormalize(images), out.maps[:, 0], true_names=[classes[i] for i in labels.tolist()],
                       pred_names=[classes[i] for i in pred], scores=out.scores[:, 0].tolist(), title=title)


def fixed_images(dataset, n: int, device: torch.device, channels_last: bool, batch_transform=None):
    """``n`` images spread evenly over ``dataset`` (the same ones every epoch), ready for the model."""
    idx = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().tolist()
    items = [dataset[i] for i in idx]
    images, labels = collate_channels_last(items) if batch_transform else default_collate(items)
    x = to_device(images, device, channels_last)
    return (batch_transform(x) if batch_transform else x), labels


def main(argv=None) -> float:
    setup_logging()
    cfg, ckpt = resolve_config(argv)
    check_config(cfg)
    device = training_device(cfg.device)
    try:
        return train(cfg, ckpt, device)
    finally:
        shutdown()


def train(cfg: TrainConfig, ckpt: dict | None, device: torch.device) -> float:
    """The run; under torchrun every rank calls it, and rank 0 writes the files."""
    main_rank = is_main()
    precision = resolve_precision(cfg.precision, device)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    # The run's config (config.json, checkpoints) records what auto chose, so a resume on another kind
    # of machine continues in the same precision and layout.
    cfg = dataclasses.replace(cfg, precision=precision, channels_last=channels_last)
    torch.manual_seed(cfg.seed)
    weights_file = None
    # The weights first, so that an offline machine fails in one line, having made nothing.
    if cfg.weights != "none" and ckpt is None:
        with torch.device("meta"):
            arch = build_model(cfg, num_classes=2)
        try:
            weights_file = resolve_weights_file(arch, cfg.weights)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None

    if ckpt is not None:
        run_dir = run_folder(cfg.resume)
    else:
        data_tag = "synthetic" if cfg.data == "synthetic" else Path(cfg.data).name
        name = broadcast_object(cfg.name or f"vgg19-{cfg.recipe}-{data_tag}-{timestamp()}")
        run_dir = new_run_dir(cfg.out, name) if main_rank else Path(cfg.out) / name
        if main_rank:
            write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    if main_rank:  # rank 0 writes the synthetic set (if needed) before the others read it
        root, splits, skipped, on_device = build_data(cfg)
    barrier()
    if not main_rank:
        root, splits, skipped, on_device = build_data(cfg)
    classes = splits["train"].classes
    train_loader, val_loader, test_loader = loaders(cfg, splits, on_device, device)

    model = build_model(cfg, len(classes))
    if weights_file is not None:
        report = load_imagenet_weights(model, weights_file)
        log.info("ImageNet weights from %s: %d tensors loaded, %d unused", report.path, len(report.loaded),
                 len(report.unused))
    model.to(device)
    phases = build_phases(cfg, model)
    options = FitOptions(precision=precision, channels_last=channels_last, compile=cfg.compile,
                         grad_clip=cfg.grad_clip, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
                         momentum=cfg.momentum, warmup_epochs=cfg.warmup_epochs, min_lr_ratio=cfg.min_lr_ratio,
                         log_every=cfg.log_every, seed=cfg.seed, progress=cfg.progress)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir)) if main_rank else None
    if ckpt is None and writer is not None:
        writer.add_text("config", config_markdown(cfg))
    log.info("data %s: %s; model %s (%s, width %g, %.1fM parameters) on %s, %s, %d process(es)", root,
             {s: len(d) for s, d in splits.items()}, model.arch, cfg.recipe, cfg.width,
             sum(p.numel() for p in model.parameters()) / 1e6, device, precision, world()[1])
    from tqdm.contrib.logging import logging_redirect_tqdm

    if cfg.gradcam_images > 0:
        cam_images, cam_labels = fixed_images(splits["valid"], cfg.gradcam_images, device, channels_last,
                                              on_device.get("valid"))

    def log_gradcam(epoch: int, _val) -> None:
        if cfg.gradcam_images > 0:
            fig = gradcam_grid(model, cam_images, cam_labels, classes, f"Grad-CAM, epoch {epoch}")
            writer.add_image("val/gradcam", figure_to_array(fig), epoch, dataformats="HWC")

    with logging_redirect_tqdm():
        with fit_exits("train_vgg19", run_dir, writer):
            result = fit(model, phases, train_loader, val_loader,
                         loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), device=device,
                         classes=classes, run_dir=run_dir, options=options, config=dataclasses.asdict(cfg),
                         writer=writer, resume=ckpt, on_epoch_end=log_gradcam,
                         train_transform=on_device.get("train"), val_transform=on_device.get("valid"))

        # The test report is for the checkpoint with the best validation accuracy.
        barrier()  # rank 0 has written it
        model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
        test = evaluate(model, test_loader, device=device, num_classes=len(classes), precision=precision,
                        channels_last=channels_last, progress=cfg.progress and main_rank, desc="test",
                        batch_transform=on_device.get("test"))
        if not main_rank:
            return test.acc1
        if cfg.gradcam_images > 0:
            save_figure(gradcam_grid(model, cam_images, cam_labels, classes,
                                     f"Grad-CAM of the best checkpoint (epoch {result.best_epoch})"),
                        run_dir / "gradcam_grid.png")
    # Counted again at the end: files that data-loader workers skipped while training (without
    # --verify-images) reach each dataset's record in this process too.
    final = {s: summarize_skipped(ds.skipped) for s, ds in splits.items() if ds.skipped}
    if final != skipped:
        log.warning("skipped files: %s", final)
    paths = write_report(run_dir, test, classes, split="test", extra={
        "skipped": final,
        "run": {"best_epoch": result.best_epoch, "best_val_acc1": result.best_score, "device": str(device),
                "precision": precision, "channels_last": channels_last, "data": str(root)},
        "history": result.history,
    })
    writer.add_scalar("acc1/test", test.acc1, result.history[-1]["epoch"])
    writer.add_scalar("acc5/test", test.acc5, result.history[-1]["epoch"])
    hparams = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
    writer.add_hparams(hparams, {"hparam/test_acc1": test.acc1, "hparam/best_val_acc1": result.best_score},
                       run_name=".")
    writer.close()
    print(f"report: {paths['markdown']} (JSON and PNGs beside it); checkpoints: {result.last_checkpoint.parent}")
    print(f"TensorBoard: tensorboard --logdir {cfg.out}")
    print(f"test top-1 accuracy: {100 * test.acc1:.2f}%")
    return test.acc1


if __name__ == "__main__":
    main()
