"""``fit``: the one run lifecycle of every training script: phases x epochs of ``run_epoch`` with a
given step (supervised classification, contrastive image-text, ...) and a given validation, with
TensorBoard, checkpoints and resume.

Model-agnostic: it takes a model, phases (which parameters train, for how long, at which learning
rate), a train loader, a :class:`~sportsnet.engine.loop.TrainStep` and a validator whose chosen metric
picks ``best.pt``. Every epoch ends with ``last.pt`` (model, optimizer, scaler, scheduler, progress,
RNG states, config, the caller's ``meta``); the epoch with the best validation score is also kept as
``best.pt``. Given the ``last.pt`` of an interrupted run, ``fit(resume=...)`` continues exactly where
it stopped: the data order of each epoch is derived from (seed, epoch), not from what ran before.

SIGTERM or SIGINT during ``fit`` finishes the current step, writes ``last.pt`` there (mid-epoch:
with the step, the epoch's running totals and the RNG states) and raises :class:`TrainingInterrupted`;
resuming fast-forwards the epoch's data order to that step, so the weights end bit-identical to an
uninterrupted run on CPU. A second SIGINT stops at once. A NaN/inf loss writes ``nonfinite.pt``
(the weights at that point, for diagnosis) before the error propagates.

Under torchrun (a process group is initialised), the model trains wrapped in
``DistributedDataParallel`` (unless the step averages gradients itself, ``step.ddp = False``;
re-wrapped per phase, since phases change what is trainable), the train loader's
``DistributedSampler`` is told the epoch, metrics are summed over ranks, all ranks stop at the same
step when any is signalled, and only rank 0 writes checkpoints, TensorBoard and calls
``on_epoch_end``. Each rank draws from its own random stream (``rank_seed``: rank 0's is the
single-process one): a fresh run reseeds ranks > 0 when ``fit`` starts, the loader's generator
(worker seeds) is reseeded per rank and epoch, and checkpoints keep every rank's RNG states, so a
resume with the same world size is exact on every rank. A checkpoint resumes under another world
size too (mid-epoch: at the same number of images seen, with that world size's data order; ranks
the checkpoint did not have get fresh streams).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..hardware import make_grad_scaler
from ..plotting import figure_to_array
from ..serialization import atomic_path
from .checkpoint import capture_rng_state, rank_rng_restorer, rank_rng_states, save_checkpoint
from .distributed import any_rank, barrier, rank_seed, start_rank_stream, sync_buffers, world
from .loop import NonFiniteLossError, StepLog, SupervisedStep, TrainStep, evaluate, run_epoch
from .optim import build_optimizer, warmup_cosine
from .report import confusion_figure, per_class_figure

log = logging.getLogger(__name__)


@dataclass
class Phase:
    """A stretch of training: ``groups`` are the trainable parameters by group name (a list of parameters,
    or a dict with ``"params"`` and per-group optimizer settings such as ``"weight_decay": 0.0``); all
    other parameters are frozen."""

    name: str
    epochs: int
    lr: float
    groups: dict[str, list[nn.Parameter] | dict[str, Any]]


@dataclass
class FitOptions:
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 0.0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    eps: float = 1e-8  # AdamW
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # added to warmup_epochs' steps
    min_lr_ratio: float = 0.0
    log_every: int = 50
    seed: int = 0
    progress: bool = True
    best_metric: str = "acc1"  # the validation metric (higher is better) that picks best.pt


@dataclass
class Validation:
    """What a validation pass returns to :func:`fit`: ``metrics`` (``FitOptions.best_metric`` among them),
    ``figures`` (TensorBoard image tag -> a function rendering it as an HWC uint8 array, called only where
    something is written) and ``result`` (the validator's own result, handed to ``on_epoch_end``)."""

    metrics: dict[str, float]
    figures: dict[str, Callable[[], Any]] = field(default_factory=dict)
    result: Any = None


def classification_validator(loader, *, device: torch.device, classes: Sequence[str], precision: str = "fp32",
                             channels_last: bool = True, batch_transform=None, progress: bool = True,
                             ) -> Callable[[nn.Module], Validation]:
    """Validation by :func:`~sportsnet.engine.loop.evaluate`: loss, acc1, acc5, and the confusion matrix and
    per-class accuracy as figures; ``result`` is the :class:`~sportsnet.engine.loop.EvalResult`."""
    def validate(model: nn.Module) -> Validation:
        val = evaluate(model, loader, device=device, num_classes=len(classes), precision=precision,
                       channels_last=channels_last, progress=progress, desc="val", batch_transform=batch_transform)
        figures = {"val/confusion_matrix": lambda: figure_to_array(confusion_figure(val.confusion, classes)),
                   "val/per_class_accuracy": lambda: figure_to_array(per_class_figure(val.per_class_accuracy,
                                                                                      classes))}
        return Validation({"loss": val.loss, "acc1": val.acc1, "acc5": val.acc5}, figures, val)

    return validate


@dataclass
class FitResult:
    best_score: float  # the best validation value of FitOptions.best_metric
    best_epoch: int
    history: list[dict[str, float]]
    last_checkpoint: Path
    best_checkpoint: Path
    global_step: int = 0


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped training after a complete step; ``checkpoint`` holds that state."""

    def __init__(self, message: str, signum: int, checkpoint: Path):
        super().__init__(message)
        self.signum, self.checkpoint = signum, checkpoint


@contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)):
    """Yields a list that receives the number of the first SIGTERM/SIGINT; a second SIGINT raises
    KeyboardInterrupt as usual. Outside the main thread (where handlers cannot be set) it never fills."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not received:
            received.append(signum)
            log.warning("%s received: finishing the current step, then saving a checkpoint (Ctrl-C again to "
                        "stop at once)", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _start_phase(model: nn.Module, phase: Phase, opts: FitOptions, steps_per_epoch: int):
    trainable = {id(p) for g in phase.groups.values() for p in (g["params"] if isinstance(g, dict) else g)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    optimizer = build_optimizer(phase.groups, opts.optimizer, phase.lr, opts.weight_decay, opts.momentum,
                                betas=opts.betas, eps=opts.eps)
    scheduler = warmup_cosine(optimizer, phase.epochs * steps_per_epoch,
                              round(opts.warmup_epochs * steps_per_epoch) + opts.warmup_steps, opts.min_lr_ratio)
    return optimizer, scheduler


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` atomically (a hard link costs no disk or time)."""
    with atomic_path(dst, sync=False) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def fit(
    model: nn.Module,
    phases: Sequence[Phase],
    train_loader,
    val_loader=None,
    *,
    device: torch.device,
    run_dir: str | os.PathLike,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    classes: Sequence[str] = (),
    options: FitOptions | None = None,
    config: dict[str, Any] | None = None,
    writer=None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, Any], None] | None = None,
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    step: TrainStep | None = None,
    validate: Callable[[nn.Module], Validation] | None = None,
    meta: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` (already on ``device``) through ``phases``; see the module docstring.

    What one step does is ``step`` (a :class:`~sportsnet.engine.loop.TrainStep`; default: a
    :class:`~sportsnet.engine.loop.SupervisedStep` with ``loss_fn`` and ``train_transform``), and what
    picks ``best.pt`` is ``validate(model)``'s ``metrics[options.best_metric]`` (default:
    :func:`classification_validator` on ``val_loader`` with ``classes`` and ``val_transform``).

    ``train_loader`` should be a ``DataLoader`` built with ``generator=torch.Generator()``: it is
    reseeded from ``(options.seed, epoch)`` before every epoch. ``writer`` is an optional
    TensorBoard ``SummaryWriter``. ``resume`` is a loaded ``last.pt``. ``meta`` is stored in every
    checkpoint (e.g. the architecture a weights file needs); ``on_epoch_end(epoch, result)`` gets the
    validator's ``result`` (rank 0 only).
    """
    opts = options or FitOptions()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    step = step or SupervisedStep(loss_fn, channels_last=opts.channels_last, batch_transform=train_transform)
    main = world()[0] == 0
    if validate is None:
        if val_loader is None or not classes:
            raise ValueError("fit needs validate=, or val_loader= and classes= for classification")
        validate = classification_validator(val_loader, device=device, classes=classes, precision=opts.precision,
                                            channels_last=opts.channels_last, batch_transform=val_transform,
                                            progress=opts.progress and main)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if opts.compile else model
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the training loader has no batches (fewer images than one batch with drop_last?)")
    scaler = make_grad_scaler(device, opts.precision)
    total_epochs = sum(p.epochs for p in phases)

    phase_idx, phase_epoch, epoch, global_step = 0, 0, 0, 0
    best_score, best_epoch, history = -math.inf, 0, []
    optimizer = scheduler = None
    skip, carry, restore_rng = 0, None, None  # continuing a stopped epoch
    if resume is None:
        start_rank_stream(opts.seed)
    if resume is not None:
        model.load_state_dict(resume["model"])
        phase_idx, phase_epoch, epoch = resume["phase"], resume["phase_epoch"], resume["epoch"]
        global_step, best_epoch = resume["global_step"], resume["best_epoch"]
        best_score = resume.get("best_score", resume.get("best_acc1", -math.inf))  # best_acc1: before 2026-12
        history = list(resume["history"])
        scaler.load_state_dict(resume["scaler"])
        if phase_epoch < phases[phase_idx].epochs:  # stopped inside a phase: pick up its optimizer
            optimizer, scheduler = _start_phase(model, phases[phase_idx], opts, steps_per_epoch)
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        else:
            phase_idx, phase_epoch = phase_idx + 1, 0
        skip = int(resume.get("step_in_epoch", 0))
        saved_world = int(resume.get("world_size", 1))
        if skip and saved_world != world()[1]:  # same images seen, in the new world's order
            skip = min(steps_per_epoch - 1, skip * saved_world // world()[1])
            log.warning("resuming a %d-process checkpoint with %d processes: epoch %d continues at step %d in "
                        "the new data order (not bit-identical to an uninterrupted run)", saved_world, world()[1],
                        epoch + 1, skip)
        restore_rng = rank_rng_restorer(resume, opts.seed, global_step)
        if skip:
            carry = resume["epoch_sums"]
            log.info("resuming epoch %d at step %d of %d (phase %d, global step %d)", epoch + 1, skip,
                     steps_per_epoch, phase_idx, global_step)
        else:
            restore_rng()
            log.info("resuming after epoch %d of %d (phase %d, global step %d)", epoch, total_epochs, phase_idx,
                     global_step)

    def on_log(s: StepLog) -> None:
        if writer is not None:
            for name, value in s.metrics.items():
                writer.add_scalar(f"train/{name}_step", value, s.step)
            writer.add_scalar("throughput/images_per_s", s.images_per_s, s.step)
            for name, lr in s.lrs.items():
                writer.add_scalar(f"lr/{name}", lr, s.step)

    def state(pi: int, phase_epoch: int, epoch: int, **extra) -> dict[str, Any]:
        return {**(meta or {}), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "scheduler": scheduler.state_dict(), "phase": pi,
                "phase_epoch": phase_epoch, "epoch": epoch, "global_step": global_step,
                "best_metric": opts.best_metric, "best_score": best_score, "best_epoch": best_epoch,
                "history": history, "classes": list(classes), "config": dict(config or {}),
                "rng": capture_rng_state(), "world_size": world()[1], **extra}

    distributed = world()[1] > 1
    if not main:
        writer, on_epoch_end = None, None

    def wrap(module: nn.Module) -> nn.Module:
        """DDP over the parameters trainable now (built per phase), for steps that leave it to DDP."""
        if not distributed or not getattr(step, "ddp", True):
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)

    def stopped(signum: int | None, where: str) -> TrainingInterrupted:
        name = signal.Signals(signum or signal.SIGTERM).name  # None: another rank's signal
        return TrainingInterrupted(f"{name}: stopped {where}; checkpoint {last_path}", signum or signal.SIGTERM,
                                   last_path)

    with stop_on_signals() as received:
        epochs_bar = tqdm(total=total_epochs, initial=epoch, desc="epochs", disable=not (opts.progress and main),
                          dynamic_ncols=True)
        for pi in range(phase_idx, len(phases)):
            phase = phases[pi]
            if optimizer is None:
                optimizer, scheduler = _start_phase(model, phase, opts, steps_per_epoch)
                phase_epoch = 0
                if main:
                    log.info("phase %r: %d epochs, lr %g, trainable groups %s", phase.name, phase.epochs, phase.lr,
                             {g["name"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups})
            train_forward = wrap(forward)
            while phase_epoch < phase.epochs:
                epoch += 1
                if getattr(train_loader, "generator", None) is not None:
                    train_loader.generator.manual_seed(rank_seed(opts.seed * 1_000_003 + epoch))
                if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                try:
                    stats = run_epoch(
                        train_forward, train_loader, optimizer, step, device=device, precision=opts.precision,
                        scaler=scaler, scheduler=scheduler, grad_clip=opts.grad_clip, log_every=opts.log_every,
                        global_step=global_step, on_log=on_log, progress=opts.progress and main,
                        desc=f"epoch {epoch} ({phase.name})", should_stop=lambda: any_rank(bool(received)),
                        skip_batches=skip, after_skip=restore_rng if skip else None, carry=carry,
                    )
                except NonFiniteLossError as e:
                    diag = ckpt_dir / f"nonfinite{'' if main else f'-rank{world()[0]}'}.pt"
                    save_checkpoint(diag, {**(meta or {}), "model": model.state_dict(), "epoch": epoch,
                                           "error": str(e), "classes": list(classes), "config": dict(config or {})})
                    raise NonFiniteLossError(f"{e}; the weights at that point are in {diag}, the last good "
                                             f"checkpoint is {last_path}") from None
                global_step += stats.steps - skip
                skip, carry = 0, None
                sync_buffers(model)
                if stats.interrupted:
                    rngs = rank_rng_states()
                    if main:
                        save_checkpoint(last_path, state(pi, phase_epoch, epoch - 1, step_in_epoch=stats.steps,
                                                         epoch_sums=stats.sums, **rngs))
                    barrier()  # every rank leaves together, after the checkpoint is complete
                    if writer is not None:
                        writer.flush()
                    raise stopped(received[0] if received else None,
                                  f"at step {stats.steps}/{steps_per_epoch} of epoch {epoch}")
                phase_epoch += 1
                val = validate(forward)
                score = val.metrics[opts.best_metric]
                row = {"epoch": epoch, "phase": pi, **{f"train_{k}": v for k, v in stats.metrics.items()},
                       **{f"val_{k}": v for k, v in val.metrics.items()}, "images_per_s": stats.images_per_s,
                       "seconds": stats.seconds}
                history.append(row)
                if writer is not None:
                    for split, values in (("train", stats.metrics), ("val", val.metrics)):
                        for name, value in values.items():
                            writer.add_scalar(f"{name}/{split}", value, epoch)
                    writer.add_scalar("throughput/epoch_images_per_s", stats.images_per_s, epoch)
                    for tag, render in val.figures.items():
                        writer.add_image(tag, render(), epoch, dataformats="HWC")
                is_best = score > best_score
                if is_best:
                    best_score, best_epoch = score, epoch
                if on_epoch_end is not None:
                    on_epoch_end(epoch, val.result)
                rngs = rank_rng_states()
                if main:
                    save_checkpoint(last_path, state(pi, phase_epoch, epoch, **rngs))
                    if is_best:
                        _link_or_copy(last_path, best_path)
                if writer is not None:
                    writer.flush()
                if main:
                    log.info("epoch %d/%d (%s): train %s | val %s | %.0f img/s | checkpoint %s%s", epoch, total_epochs,
                             phase.name, _fmt(stats.metrics), _fmt(val.metrics), stats.images_per_s, last_path,
                             " (best)" if is_best else "")
                epochs_bar.set_postfix({f"val_{opts.best_metric}": f"{score:.3f}", "best": f"{best_score:.3f}"})
                epochs_bar.update(1)
                if any_rank(bool(received)) and (pi, phase_epoch) != (len(phases) - 1, phase.epochs):
                    raise stopped(received[0] if received else None, f"after epoch {epoch}")
            optimizer = scheduler = None
        epochs_bar.close()
    return FitResult(best_score, best_epoch, history, last_path, best_path, global_step)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
