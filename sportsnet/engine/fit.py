"""``fit``: phases x epochs of ``train_one_epoch`` + ``evaluate``, with TensorBoard, checkpoints and resume.

Model-agnostic: it takes a model, phases (which parameters train, for how long, at which learning
rate), loaders and a loss. Every epoch ends with ``last.pt`` (model, optimizer, scaler, scheduler,
progress, RNG states, config); the best validation top-1 is also kept as ``best.pt``. Given the
``last.pt`` of an interrupted run, ``fit(resume=...)`` continues exactly where it stopped: the
data order of each epoch is derived from (seed, epoch), not from what ran before.

SIGTERM or SIGINT during ``fit`` finishes the current step, writes ``last.pt`` there (mid-epoch:
with the step, the epoch's running totals and the RNG states) and raises :class:`TrainingInterrupted`;
resuming fast-forwards the epoch's data order to that step, so the weights end bit-identical to an
uninterrupted run on CPU. A second SIGINT stops at once. A NaN/inf loss writes ``nonfinite.pt``
(the weights at that point, for diagnosis) before the error propagates.

Under torchrun (a process group is initialised), the model trains wrapped in
``DistributedDataParallel`` (re-wrapped per phase, since phases change what is trainable), the train
loader's ``DistributedSampler`` is told the epoch, metrics are summed over ranks, all ranks stop at
the same step when any is signalled, and only rank 0 writes checkpoints, TensorBoard and calls
``on_epoch_end``. Each rank draws from its own random stream (``rank_seed``: rank 0's is the
single-process one): a fresh run reseeds ranks > 0 when ``fit`` starts, the loader's generator
(worker seeds) is reseeded per rank and epoch, and checkpoints keep every rank's RNG states, so a
resume with the same world size is exact on every rank. A checkpoint resumes under another world
size too (mid-epoch: at the same number of images seen, with that world size's data order; ranks
the checkpoint did not have get fresh streams).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import capture_rng_state, rank_rng_restorer, rank_rng_states, save_checkpoint
from .distributed import any_rank, barrier, rank_seed, start_rank_stream, sync_buffers, world
from .loop import EvalResult, NonFiniteLossError, StepLog, evaluate, make_grad_scaler, train_one_epoch
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
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Train ``model`` (already on ``device``) through ``phases``; see the module docstring.

    ``train_loader`` should be a ``DataLoader`` built with ``generator=torch.Generator()``: it is
    reseeded from ``(options.seed, epoch)`` before every epoch. ``writer`` is an optional
    TensorBoard ``SummaryWriter``. ``resume`` is a loaded ``last.pt``. ``train_transform`` /
    ``val_transform`` run on each batch on ``device`` (``sportsnet.data.batch_aug``).
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
    skip, carry, restore_rng = 0, None, None  # continuing a stopped epoch
    if resume is None:
        start_rank_stream(opts.seed)
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
            log.info("resuming after epoch %d (phase %d, global step %d)", epoch, phase_idx, global_step)

    def on_log(s: StepLog) -> None:
        if writer is not None:
            writer.add_scalar("train/loss_step", s.loss, s.step)
            writer.add_scalar("train/acc1_step", s.acc1, s.step)
            writer.add_scalar("throughput/images_per_s", s.images_per_s, s.step)
            for name, lr in s.lrs.items():
                writer.add_scalar(f"lr/{name}", lr, s.step)

    def state(pi: int, phase_epoch: int, epoch: int, **extra) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(), "phase": pi, "phase_epoch": phase_epoch, "epoch": epoch,
                "global_step": global_step, "best_acc1": best_acc1, "best_epoch": best_epoch,
                "history": history, "classes": list(classes), "config": dict(config or {}),
                "rng": capture_rng_state(), "world_size": world()[1], **extra}

    main = world()[0] == 0
    distributed = world()[1] > 1
    if not main:
        writer, on_epoch_end = None, None

    def wrap(module: nn.Module) -> nn.Module:
        """DDP over the parameters trainable now (built per phase)."""
        if not distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)

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
                             {g: sum(p.numel() for p in ps) for g, ps in phase.groups.items()})
            train_forward = wrap(forward)
            while phase_epoch < phase.epochs:
                epoch += 1
                if getattr(train_loader, "generator", None) is not None:
                    train_loader.generator.manual_seed(rank_seed(opts.seed * 1_000_003 + epoch))
                if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                try:
                    stats = train_one_epoch(
                        train_forward, train_loader, optimizer, loss_fn, device=device, precision=opts.precision,
                        scaler=scaler, scheduler=scheduler, channels_last=opts.channels_last, grad_clip=opts.grad_clip,
                        log_every=opts.log_every, global_step=global_step, on_log=on_log,
                        progress=opts.progress and main, desc=f"epoch {epoch} ({phase.name})",
                        should_stop=lambda: any_rank(bool(received)), skip_batches=skip,
                        after_skip=restore_rng if skip else None, carry=carry,
                        batch_transform=train_transform,
                    )
                except NonFiniteLossError as e:
                    diag = ckpt_dir / f"nonfinite{'' if main else f'-rank{world()[0]}'}.pt"
                    save_checkpoint(diag, {"model": model.state_dict(), "epoch": epoch, "error": str(e),
                                           "classes": list(classes), "config": dict(config or {})})
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
                    signum = received[0] if received else signal.SIGTERM  # another rank's signal
                    name = signal.Signals(signum).name
                    raise TrainingInterrupted(f"{name}: stopped at step {stats.steps}/{steps_per_epoch} of epoch {epoch}; "
                                              f"checkpoint {last_path}", signum, last_path)
                phase_epoch += 1
                val = evaluate(forward, val_loader, device=device, num_classes=len(classes), precision=opts.precision,
                               channels_last=opts.channels_last, progress=opts.progress and main, desc="val",
                               batch_transform=val_transform)
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
                rngs = rank_rng_states()
                if main:
                    save_checkpoint(last_path, state(pi, phase_epoch, epoch, **rngs))
                    if is_best:
                        _link_or_copy(last_path, best_path)
                if writer is not None:
                    writer.flush()
                if main:
                        log.info("epoch %d/%d (%s): train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% top-5 %.2f%% "
                             "| %.0f img/s | checkpoint %s%s", epoch, total_epochs, phase.name, stats.loss,
                             100 * stats.acc1, val.loss, 100 * val.acc1, 100 * val.acc5, stats.images_per_s,
                             last_path, " (best)" if is_best else "")
                epochs_bar.set_postfix(val_acc=f"{val.acc1:.3f}", best=f"{best_acc1:.3f}")
                epochs_bar.update(1)
                if any_rank(bool(received)) and (pi, phase_epoch) != (len(phases) - 1, phase.epochs):
                    signum = received[0] if received else signal.SIGTERM  # another rank's signal
                    name = signal.Signals(signum).name
                    raise TrainingInterrupted(f"{name}: stopped after epoch {epoch}; checkpoint {last_path}",
                                              signum, last_path)
            optimizer = scheduler = None
        epochs_bar.close()
    return FitResult(best_acc1, best_epoch, history, last_path, best_path, global_step)
