"""``fit``: phases x epochs of ``train_one_epoch`` + ``evaluate``, with TensorBoard, checkpoints and resume.

Model-agnostic: it takes a model, phases (which parameters train, for how long, at which learning
rate), loaders and a loss. Every epoch ends with ``last.pt`` (model, optimizer, scaler, scheduler,
progress, RNG states, config); the best validation top-1 is also kept as ``best.pt``. Given the
``last.pt`` of an interrupted run, ``fit(resume=...)`` continues exactly where it stopped: the
data order of each epoch is derived from (seed, epoch), not from what ran before.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from .loop import EvalResult, StepLog, evaluate, make_grad_scaler, train_one_epoch
from .optim import build_optimizer, warmup_cosine
from ..plotting import figure_to_array
from .report import confusion_figure, per_class_figure

log = logging.getLogger(__name__)


@dataclass
class Phase:
    """A stretch of training: ``groups`` are the trainable parameters by name; all others are frozen."""

    name: str
    epochs: int
    lr: float
    groups: dict[str, list[nn.Parameter]]


@dataclass
class FitOptions:
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 0.0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    log_every: int = 50
    seed: int = 0
    progress: bool = True


@dataclass
class FitResult:
    best_acc1: float
    best_epoch: int
    history: list[dict[str, float]]
    last_checkpoint: Path
    best_checkpoint: Path
    global_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _start_phase(model: nn.Module, phase: Phase, opts: FitOptions, steps_per_epoch: int):
    trainable = {id(p) for ps in phase.groups.values() for p in ps}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    optimizer = build_optimizer(phase.groups, opts.optimizer, phase.lr, opts.weight_decay, opts.momentum)
    scheduler = warmup_cosine(optimizer, phase.epochs * steps_per_epoch,
                              round(opts.warmup_epochs * steps_per_epoch), opts.min_lr_ratio)
    return optimizer, scheduler


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` atomically (a hard link costs no disk or time)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def fit(
    model: nn.Module,
    phases: Sequence[Phase],
    train_loader,
    val_loader,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    classes: Sequence[str],
    run_dir: str | os.PathLike,
    options: FitOptions | None = None,
    config: dict[str, Any] | None = None,
    writer=None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, EvalResult], None] | None = None,
) -> FitResult:
    """Train ``model`` (already on ``device``) through ``phases``; see the module docstring.

    ``train_loader`` should be a ``DataLoader`` built with ``generator=torch.Generator()``: it is
    reseeded from ``(options.seed, epoch)`` before every epoch. ``writer`` is an optional
    TensorBoard ``SummaryWriter``. ``resume`` is a loaded ``last.pt``.
    """
    opts = options or FitOptions()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if opts.compile else model
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the training loader has no batches (fewer images than one batch with drop_last?)")
    scaler = make_grad_scaler(device, opts.precision)
    total_epochs = sum(p.epochs for p in phases)

    phase_idx, phase_epoch, epoch, global_step = 0, 0, 0, 0
    best_acc1, best_epoch, history = -1.0, 0, []
    optimizer = scheduler = None
    if resume is not None:
        model.load_state_dict(resume["model"])
        phase_idx, phase_epoch, epoch = resume["phase"], resume["phase_epoch"], resume["epoch"]
        global_step, best_acc1, best_epoch = resume["global_step"], resume["best_acc1"], resume["best_epoch"]
        history = list(resume["history"])
        scaler.load_state_dict(resume["scaler"])
        if phase_epoch < phases[phase_idx].epochs:  # stopped inside a phase: pick up its optimizer
            optimizer, scheduler = _start_phase(model, phases[phase_idx], opts, steps_per_epoch)
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        else:
            phase_idx, phase_epoch = phase_idx + 1, 0
        restore_rng_state(resume["rng"])
        log.info("resuming after epoch %d (phase %d, global step %d)", epoch, phase_idx, global_step)

    def on_log(s: StepLog) -> None:
        if writer is not None:
            writer.add_scalar("train/loss_step", s.loss, s.step)
            writer.add_scalar("train/acc1_step", s.acc1, s.step)
            writer.add_scalar("throughput/images_per_s", s.images_per_s, s.step)
            for name, lr in s.lrs.items():
                writer.add_scalar(f"lr/{name}", lr, s.step)

    epochs_bar = tqdm(total=total_epochs, initial=epoch, desc="epochs", disable=not opts.progress, dynamic_ncols=True)
    for pi in range(phase_idx, len(phases)):
        phase = phases[pi]
        if optimizer is None:
            optimizer, scheduler = _start_phase(model, phase, opts, steps_per_epoch)
            phase_epoch = 0
            log.info("phase %r: %d epochs, lr %g, trainable groups %s", phase.name, phase.epochs, phase.lr,
                     {g: sum(p.numel() for p in ps) for g, ps in phase.groups.items()})
        while phase_epoch < phase.epochs:
            epoch += 1
            if getattr(train_loader, "generator", None) is not None:
                train_loader.generator.manual_seed(opts.seed * 1_000_003 + epoch)
            stats = train_one_epoch(
                forward, train_loader, optimizer, loss_fn, device=device, precision=opts.precision, scaler=scaler,
                scheduler=scheduler, channels_last=opts.channels_last, grad_clip=opts.grad_clip,
                log_every=opts.log_every, global_step=global_step, on_log=on_log, progress=opts.progress,
                desc=f"epoch {epoch} ({phase.name})",
            )
            global_step += stats.steps
            phase_epoch += 1
            val = evaluate(forward, val_loader, device=device, num_classes=len(classes), precision=opts.precision,
                           channels_last=opts.channels_last, progress=opts.progress, desc="val")
            row = {"epoch": epoch, "phase": pi, "train_loss": stats.loss, "train_acc1": stats.acc1,
                   "train_acc5": stats.acc5, "val_loss": val.loss, "val_acc1": val.acc1, "val_acc5": val.acc5,
                   "images_per_s": stats.images_per_s, "seconds": stats.seconds}
            history.append(row)
            if writer is not None:
                for split, values in (("train", stats), ("val", val)):
                    writer.add_scalar(f"loss/{split}", values.loss, epoch)
                    writer.add_scalar(f"acc1/{split}", values.acc1, epoch)
                    writer.add_scalar(f"acc5/{split}", values.acc5, epoch)
                writer.add_scalar("throughput/epoch_images_per_s", stats.images_per_s, epoch)
                writer.add_image("val/confusion_matrix", figure_to_array(confusion_figure(val.confusion, classes)),
                                 epoch, dataformats="HWC")
                writer.add_image("val/per_class_accuracy",
                                 figure_to_array(per_class_figure(val.per_class_accuracy, classes)),
                                 epoch, dataformats="HWC")
            is_best = val.acc1 > best_acc1
            if is_best:
                best_acc1, best_epoch = val.acc1, epoch
            if on_epoch_end is not None:
                on_epoch_end(epoch, val)
            save_checkpoint(last_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(), "phase": pi, "phase_epoch": phase_epoch, "epoch": epoch,
                "global_step": global_step, "best_acc1": best_acc1, "best_epoch": best_epoch,
                "history": history, "classes": list(classes), "config": dict(config or {}),
                "rng": capture_rng_state(),
            })
            if is_best:
                _link_or_copy(last_path, best_path)
            if writer is not None:
                writer.flush()
            log.info("epoch %d/%d (%s): train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% top-5 %.2f%% | "
                     "%.0f img/s | checkpoint %s%s", epoch, total_epochs, phase.name, stats.loss, 100 * stats.acc1,
                     val.loss, 100 * val.acc1, 100 * val.acc5, stats.images_per_s, last_path,
                     " (best)" if is_best else "")
            epochs_bar.set_postfix(val_acc=f"{val.acc1:.3f}", best=f"{best_acc1:.3f}")
            epochs_bar.update(1)
        optimizer = scheduler = None
    epochs_bar.close()
    return FitResult(best_acc1, best_epoch, history, last_path, best_path, global_step)
