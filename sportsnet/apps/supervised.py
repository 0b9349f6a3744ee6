"""The supervised image-classification run that train_vgg19.py (the seeds' VGG19 recipes) and train.py (any
torchvision or timm backbone) share: the flags every classifier run has, the data and loaders, the run
itself (phases of :func:`sportsnet.engine.fit`, the test report, a Grad-CAM grid in TensorBoard and in the
run folder, torchrun, resume), and reading a finished run back (:func:`load_run`, for explain.py).

What differs between the programs is the model: each program's config class (a :class:`RunConfig`)
says how to build it, which weights it starts from, its phases and its run name.
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
from ..data.classnames import SPORTS100_CLASSES
from ..data.images import UnreadableImageError
from ..data.normalization import IMAGENET_MEAN, IMAGENET_STD
from ..engine import FitOptions, Phase, evaluate, fit, load_checkpoint, write_report
from ..engine.distributed import ShardSampler, barrier, broadcast_object, is_main, shutdown, world
from ..engine.loop import to_device
from ..engine.optim import OPTIMIZERS
from ..hardware import resolve_channels_last, resolve_precision
from ..plotting import figure_to_array, save_figure
from ..serialization import write_json
from .config import (
    config_markdown,
    fit_exits,
    new_run_dir,
    option,
    parse_config,
    precision_option,
    refuse_inapplicable,
    resume_config,
    run_folder,
    setup_logging,
    timestamp,
    training_device,
)

log = logging.getLogger(__name__)
DEFAULT_DATA = "data/sports100"
DEMO_SET = SYNTHETIC_SETS["vgg-demo"]
# The offline demo's data and budget, what every classifier program's demo shares (train_vgg19.DEMO says why
# these values): the synthetic set at 96 px, 12 epochs of everything at 2e-3 from random weights.
DEMO_BUDGET = dict(data="synthetic", weights="none", image_size=DEMO_SET["size"], crop_scale=0.6, phase1_epochs=0,
                   phase2_epochs=12, phase2_lr_factor=1.0, lr=2e-3, batch_size=32, label_smoothing=0.0,
                   warmup_epochs=0.5)
# Flags that may change when resuming; everything else comes from the checkpoint's config.
RUNTIME_FLAGS = {"resume", "workers", "progress", "device", "log_every", "data_path", "cache_dir"}


#: ``applies=`` of the flags that shape the synthetic set: they mean nothing for a dataset folder.
SYNTHETIC = ("data", ("synthetic",))


@dataclass
class RunConfig:
    """The flags of every classifier run. A program's config adds the model's and implements the methods
    below (:meth:`build_model`, :meth:`build_phases`, :meth:`resolve_weights`, :meth:`run_name`,
    :meth:`describe`)."""

    data: str = option("", "100-Sports folder (train/ valid/ test/ [sports.csv]), or 'synthetic'; empty: "
                           f"{DEFAULT_DATA} if it exists, else the offline demo")
    out: str = option("runs", "folder for run folders")
    name: str = option("", "run folder name (default: <model>-<data>-<time>)")
    resume: str = option("", "run folder or checkpoint to continue with its saved config")
    image_size: int = option(224, "training and evaluation resolution in pixels", bounds=">=16")
    crop_scale: float = option(0.25, "smallest area fraction of the random resized crop", bounds="(0,1]")
    eval_resize_ratio: float = option(1.0, "eval: resize to size*ratio, centre-crop size (100-Sports is 224 px)",
                                      bounds=">=1")
    phase1_epochs: int = option(3, "epochs training only the new layers on the frozen base", bounds=">=0")
    phase2_epochs: int = option(7, "epochs fine-tuning everything", bounds=">=0")
    phase2_lr_factor: float = option(0.1, "learning-rate factor of phase 2", bounds=">0")
    optimizer: str = option("adamw", "optimizer", OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate", bounds=">0")
    weight_decay: float = option(1e-4, "weight decay", bounds=">=0")
    momentum: float = option(0.9, "SGD momentum", bounds="[0,1)", applies=("optimizer", ("sgd",)))
    warmup_epochs: float = option(0.5, "linear warmup at the start of each phase, in epochs", bounds=">=0")
    min_lr_ratio: float = option(0.01, "cosine schedule ends at lr * this", bounds="[0,1]")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing", bounds="[0,1)")
    grad_clip: float = option(0.0, "clip the gradient norm to this (0: off)", bounds=">=0")
    batch_size: int = option(32, "training batch size (evaluation uses twice this)", bounds=">=1")
    workers: int = option(-1, "data-loader workers (-1: auto)", bounds=">=-1")
    precision: str = precision_option()
    channels_last: bool | None = option(None, "channels-last model and inputs (auto: where this hardware's conv "
                                              "kernels are faster with it; the choice is logged)", switch=True)
    compile: bool = option(False, "torch.compile the model")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    seed: int = option(0, "seed of initialisation, data order and augmentation")
    log_every: int = option(20, "steps between progress/TensorBoard updates (each is a host sync)", bounds=">=1")
    gradcam_images: int = option(16, "validation images in the Grad-CAM grid logged every epoch (0: none)",
                                 bounds=">=0")
    verify_images: bool = option(True, "decode every image once up front; report and drop unreadable ones")
    strict: bool = option(False, "stop at the first unreadable image instead of skipping it")
    data_path: str = option("auto", "cache: decode every image once into a memory-mapped uint8 file and augment "
                            "whole batches on the training device (the same augmentation distribution, faster); "
                            "plain: decode and augment image by image in the workers every epoch; auto: cache "
                            "where a split's images share one size", ("auto", "cache", "plain"))
    cache_dir: str = option("data/cache/decoded", "folder of the decoded-image caches")
    progress: bool = option(True, "tqdm progress bars")
    synthetic_classes: int = option(DEMO_SET["num_classes"], "synthetic set: number of classes",
                                    bounds=f"[2,{len(SPORTS100_CLASSES)}]", applies=SYNTHETIC)
    synthetic_train_per_class: int = option(DEMO_SET["train_per_class"], "synthetic set: training images per class",
                                            bounds=">=1", applies=SYNTHETIC)
    synthetic_eval_per_class: int = option(DEMO_SET["eval_per_class"], "synthetic set: images per class in valid "
                                           "and in test", bounds=">=1", applies=SYNTHETIC)
    synthetic_size: int = option(DEMO_SET["size"], "synthetic set: image side in pixels", bounds=">=32",
                                 applies=SYNTHETIC)
    synthetic_root: str = option(DEMO_SET["root"], "where the synthetic set is written (and reused)",
                                 applies=SYNTHETIC)

    # What a program's config says about its model.
    def build_model(self, num_classes: int, weights: Path | None = None) -> nn.Module:
        """The model, with random weights, or ``weights`` (a file :meth:`resolve_weights` found) loaded."""
        raise NotImplementedError

    def build_phases(self, model: nn.Module) -> list[Phase]:
        raise NotImplementedError

    def resolve_weights(self) -> Path | None:
        """Before any work: the file of the weights to start from (None for random ones), or a one-line exit."""
        return None

    def run_name(self) -> str:
        """The run folder's name without the time stamp."""
        raise NotImplementedError

    def canonical(self) -> "RunConfig":
        """The config with its names spelled as configs record them (a one-line exit for a bad name)."""
        return self

    def describe(self, model: nn.Module) -> str:
        """The model in a few words, for the log."""
        return type(model).__name__

    def image_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` of the inputs: ImageNet's unless the model family says otherwise."""
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)

    def grayscale_input(self) -> bool:
        return False

    def data_tag(self) -> str:
        return "synthetic" if self.data == "synthetic" else Path(self.data).name

    def transforms(self, train: bool, batched: bool = False):
        """The train or eval transforms of this run's images."""
        mean, std = self.image_stats()
        geometry = dict(scale=(self.crop_scale, 1.0)) if train else dict(resize_ratio=self.eval_resize_ratio)
        return build_transforms(train, self.image_size, mean, std, grayscale=self.grayscale_input(), batched=batched,
                                **geometry)


def resolve_config(cls: type[RunConfig], argv, demo: dict, description: str) -> tuple[RunConfig, dict | None]:
    """Flags -> a ``cls`` config and the checkpoint to resume (None for a new run). ``--resume``: the saved
    config. Otherwise :meth:`RunConfig.canonical` of the flags, with ``--data`` defaulting to
    data/sports100 where it exists, else the offline demo: the synthetic set, with ``demo``'s settings for
    every flag not given."""
    cfg, given = parse_config(cls, argv, cls(), description)
    if cfg.resume:
        return resume_config(cls, cfg, given, RUNTIME_FLAGS)
    cfg = cfg.canonical()
    demo_note = ""
    if not cfg.data:
        if (Path(DEFAULT_DATA) / "train").is_dir():
            cfg = dataclasses.replace(cfg, data=DEFAULT_DATA)
        else:
            demo_note = (f"no dataset at {DEFAULT_DATA} (pass --data PATH to use 100-Sports): running the offline "
                         f"demo on the synthetic set")
            cfg = dataclasses.replace(cfg, data="synthetic")
    if cfg.data != "synthetic" and not (Path(cfg.data) / "train").is_dir():  # first: what the user meant to say
        raise SystemExit(f"error: --data {cfg.data}: no such dataset folder (expected train/, valid/ and test/ in "
                         f"it, the 100-Sports layout; or --data synthetic)")
    refuse_inapplicable(cfg, given)
    if demo_note:
        print(demo_note, flush=True)
    if cfg.data == "synthetic":
        cfg = dataclasses.replace(cfg, **{k: v for k, v in demo.items() if k not in given})
    return cfg, None


def main_of(script: str, resolve, check, argv) -> float:
    """A training program's ``main``: ``resolve(argv)`` -> ``(config, checkpoint)``, ``check(config)`` (one-line
    exits before any work), then :func:`run` on the device ``--device`` (or torchrun) gives."""
    setup_logging()
    cfg, ckpt = resolve(argv)
    check(cfg)
    device = training_device(cfg.device)
    try:
        return run(cfg, ckpt, device, script)
    finally:
        shutdown()


def build_data(cfg: RunConfig):
    """``(root, splits, skipped, on_device)``: the three splits (the synthetic set written first if asked
    for), unreadable files counted, and for cached splits the batch transform that replaces the per-image
    one on the training device."""
    if cfg.data == "synthetic":
        root = make_synthetic_sports(cfg.synthetic_root, num_classes=cfg.synthetic_classes,
                                     train_per_class=cfg.synthetic_train_per_class,
                                     eval_per_class=cfg.synthetic_eval_per_class, size=cfg.synthetic_size,
                                     seed=cfg.seed)
    else:
        root = Path(cfg.data)
        if not (root / "train").is_dir():
            raise SystemExit(f"error: --data {cfg.data}: no such dataset folder (expected {root}/train, valid/ and "
                             f"test/, the 100-Sports layout; or --data synthetic)")
    splits = {s: Sports100(root, s, transform=cfg.transforms(s == "train"), strict=cfg.strict)
              for s in ("train", "valid", "test")}
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
                on_device[s] = cfg.transforms(s == "train", batched=True)
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


def loaders(cfg: RunConfig, splits, on_device: dict, device: torch.device):
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


def gradcam_grid(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: list[str], title: str,
                 mean, std):
    """Grad-CAM (the model family's default layer) of the predicted class over fixed images, as a figure."""
    out = GradCAM(model)(images)
    pred = out.classes[:, 0].tolist()
    return grid_figure(denormalize(images, mean, std), out.maps[:, 0], true_names=[classes[i] for i in labels.tolist()],
                       pred_names=[classes[i] for i in pred], scores=out.scores[:, 0].tolist(), title=title)


def fixed_images(dataset, n: int, device: torch.device, channels_last: bool, batch_transform=None):
    """``n`` images spread evenly over ``dataset`` (the same ones every epoch), ready for the model."""
    idx = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().tolist()
    items = [dataset[i] for i in idx]
    images, labels = collate_channels_last(items) if batch_transform else default_collate(items)
    x = to_device(images, device, channels_last)
    return (batch_transform(x) if batch_transform else x), labels


def run(cfg: RunConfig, ckpt: dict | None, device: torch.device, script: str) -> float:
    """The run of ``cfg`` (resumed from ``ckpt``, a last.pt, if given); returns the test top-1 accuracy.
    Under torchrun every rank calls it, and rank 0 writes the files. ``script``: the program's name, for
    the message that says how to continue a stopped run."""
    main_rank = is_main()
    precision = resolve_precision(cfg.precision, device)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    # The run's config (config.json, checkpoints) records what auto chose, so a resume on another kind
    # of machine continues in the same precision and layout.
    cfg = dataclasses.replace(cfg, precision=precision, channels_last=channels_last)
    torch.manual_seed(cfg.seed)
    # The weights first, so that an offline machine fails in one line, having made nothing.
    weights = cfg.resolve_weights() if ckpt is None else None

    if ckpt is not None:
        run_dir = run_folder(cfg.resume)
    else:
        name = broadcast_object(cfg.name or f"{cfg.run_name()}-{timestamp()}")
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

    model = cfg.build_model(len(classes), weights)
    model.to(device)
    phases = cfg.build_phases(model)
    options = FitOptions(precision=precision, channels_last=channels_last, compile=cfg.compile,
                         grad_clip=cfg.grad_clip, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
                         momentum=cfg.momentum, warmup_epochs=cfg.warmup_epochs, min_lr_ratio=cfg.min_lr_ratio,
                         log_every=cfg.log_every, seed=cfg.seed, progress=cfg.progress)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir)) if main_rank else None
    if ckpt is None and writer is not None:
        writer.add_text("config", config_markdown(cfg))
    log.info("data %s: %s; model %s (%.1fM parameters) on %s, %s, %d process(es)", root,
             {s: len(d) for s, d in splits.items()}, cfg.describe(model),
             sum(p.numel() for p in model.parameters()) / 1e6, device, precision, world()[1])
    from tqdm.contrib.logging import logging_redirect_tqdm

    mean, std = cfg.image_stats()
    if cfg.gradcam_images > 0:
        cam_images, cam_labels = fixed_images(splits["valid"], cfg.gradcam_images, device, channels_last,
                                              on_device.get("valid"))

    def log_gradcam(epoch: int, _val) -> None:
        if cfg.gradcam_images > 0:
            fig = gradcam_grid(model, cam_images, cam_labels, classes, f"Grad-CAM, epoch {epoch}", mean, std)
            writer.add_image("val/gradcam", figure_to_array(fig), epoch, dataformats="HWC")

    with logging_redirect_tqdm():
        with fit_exits(script, run_dir, writer):
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
                                     f"Grad-CAM of the best checkpoint (epoch {result.best_epoch})", mean, std),
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
