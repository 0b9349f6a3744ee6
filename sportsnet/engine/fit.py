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
from .loop import NonFiniteLossError, StepLog, SupervisedStep, TrainStats, TrainStep, evaluate, run_epoch
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
    step = step or SupervisedStep(loss_fn, channels_last=opts.channels_last, batch_transform=train_transform)
    if validate is None:
        if val_loader is None or not classes:
            raise ValueError("fit needs validate=, or val_loader= and classes= for classification")
        validate = classification_validator(val_loader, device=device, classes=classes, precision=opts.precision,
                                            channels_last=opts.channels_last, batch_transform=val_transform,
                                            progress=opts.progress and world()[0] == 0)
    run = _Run(model, phases, train_loader, step, validate, device=device, run_dir=Path(run_dir), opts=opts,
               classes=classes, config=config, meta=meta, writer=writer, on_epoch_end=on_epoch_end)
    if resume is None:
        start_rank_stream(opts.seed)  # a fresh run: ranks > 0 move to their own random streams
    else:
        run.resume(resume)
    with stop_on_signals() as signals:
        return run.train(signals)


class _Run:
    """One call of :func:`fit`: what it was given, and the progress that ``last.pt`` saves.

    The steps: :meth:`resume` (given a checkpoint), then :meth:`train`: each phase (:meth:`_run_phase`),
    each epoch of it (:meth:`_train_epoch`, then :meth:`_end_epoch`: validate, report, checkpoint), until
    the last phase ends or a signal stops the run (:meth:`_stop_mid_epoch`, or after an epoch).

    The counters count what is complete: ``epoch`` epochs in all, ``phase_epoch`` of them in phase
    ``phase_idx``, ``global_step`` optimizer steps. ``optimizer`` and ``scheduler`` are those of the
    current phase, ``None`` until it starts.
    """

    def __init__(self, model: nn.Module, phases: Sequence[Phase], train_loader, step: TrainStep,
                 validate: Callable[[nn.Module], Validation], *, device: torch.device, run_dir: Path,
                 opts: FitOptions, classes: Sequence[str], config: dict[str, Any] | None,
                 meta: dict[str, Any] | None, writer, on_epoch_end: Callable[[int, Any], None] | None):
        self.model, self.phases, self.train_loader = model, phases, train_loader
        self.step, self.validate = step, validate
        self.device, self.opts, self.classes, self.config, self.meta = device, opts, classes, config, meta
        self.main = world()[0] == 0
        self.progress = opts.progress and self.main
        self.writer = writer if self.main else None  # only rank 0 reports
        self.on_epoch_end = on_epoch_end if self.main else None
        self.ckpt_dir = run_dir / "checkpoints"
        self.last_path, self.best_path = self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt"
        if opts.channels_last:
            model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(model) if opts.compile else model
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError("the training loader has no batches (fewer images than one batch with drop_last?)")
        self.scaler = make_grad_scaler(device, opts.precision)
        self.total_epochs = sum(p.epochs for p in phases)
        self.phase_idx, self.phase_epoch, self.epoch, self.global_step = 0, 0, 0, 0
        self.best_score, self.best_epoch, self.history = -math.inf, 0, []
        self.optimizer = self.scheduler = None
        # An epoch a signal stopped, for the next epoch to continue (set by resume): the steps it had
        # taken, its running totals, and what restores the RNG states once those steps are skipped.
        self.skip, self.carry, self.after_skip = 0, None, None
        self.signals: list[int] = []  # the signals received (train() hands in stop_on_signals' list)

    @property
    def phase(self) -> Phase:
        return self.phases[self.phase_idx]

    # -- start and resume ------------------------------------------------------------------------------

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Pick up a ``last.pt``: weights, progress, scaler, and the phase's optimizer and schedule
        (or the next phase, if the checkpoint ended one); a mid-epoch one sets up the epoch's continuation."""
        self.model.load_state_dict(ckpt["model"])
        self.phase_idx, self.phase_epoch, self.epoch = ckpt["phase"], ckpt["phase_epoch"], ckpt["epoch"]
        self.global_step, self.best_epoch = ckpt["global_step"], ckpt["best_epoch"]
        self.best_score = ckpt.get("best_score", ckpt.get("best_acc1", -math.inf))  # best_acc1: before 2026-12
        self.history = list(ckpt["history"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.phase_epoch < self.phase.epochs:  # stopped inside a phase: pick up its optimizer
            self._start_phase()
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        else:
            self._next_phase()
        self.skip = self._resume_step(ckpt)
        restore_rng = rank_rng_restorer(ckpt, self.opts.seed, self.global_step)
        if self.skip:  # the RNG states are those after the skipped steps: restored once they are skipped
            self.carry, self.after_skip = ckpt["epoch_sums"], restore_rng
            log.info("resuming epoch %d at step %d of %d (phase %d, global step %d)", self.epoch + 1, self.skip,
                     self.steps_per_epoch, self.phase_idx, self.global_step)
        else:
            restore_rng()
            log.info("resuming after epoch %d of %d (phase %d, global step %d)", self.epoch, self.total_epochs,
                     self.phase_idx, self.global_step)

    def _resume_step(self, ckpt: dict[str, Any]) -> int:
        """The step of the stopped epoch to continue at (0: the checkpoint ended an epoch). Under another
        world size: the step at which this world has seen as many images."""
        skip = int(ckpt.get("step_in_epoch", 0))
        saved_world, size = int(ckpt.get("world_size", 1)), world()[1]
        if skip and saved_world != size:
            skip = min(self.steps_per_epoch - 1, skip * saved_world // size)
            log.warning("resuming a %d-process checkpoint with %d processes: epoch %d continues at step %d in "
                        "the new data order (not bit-identical to an uninterrupted run)", saved_world, size,
                        self.epoch + 1, skip)
        return skip

    # -- phases ----------------------------------------------------------------------------------------

    def train(self, signals: list[int]) -> FitResult:
        """Every phase from the current one on; ``signals`` fills when a SIGTERM/SIGINT arrives."""
        self.signals = signals
        self.bar = tqdm(total=self.total_epochs, initial=self.epoch, desc="epochs", disable=not self.progress,
                        dynamic_ncols=True)
        while self.phase_idx < len(self.phases):
            self._run_phase()
            self._next_phase()
        self.bar.close()
        return FitResult(self.best_score, self.best_epoch, self.history, self.last_path, self.best_path,
                         self.global_step)

    def _run_phase(self) -> None:
        """The current phase's remaining epochs; a signal stops the run after the epoch it arrived in
        (or, in the middle of an epoch, after the current step: see :meth:`_train_epoch`)."""
        phase = self.phase
        if self.optimizer is None:  # not resumed inside this phase
            self._start_phase()
            if self.main:
                log.info("phase %r: %d epochs, lr %g, trainable groups %s", phase.name, phase.epochs, phase.lr,
                         {g["name"]: sum(p.numel() for p in g["params"]) for g in self.optimizer.param_groups})
        forward = self._wrap(self.forward)  # per phase: DDP covers the parameters trainable now
        while self.phase_epoch < phase.epochs:
            stats = self._train_epoch(forward)
            self.epoch, self.phase_epoch = self.epoch + 1, self.phase_epoch + 1
            self._end_epoch(stats)
            run_ends = (self.phase_idx, self.phase_epoch) == (len(self.phases) - 1, phase.epochs)
            if self._stop_requested() and not run_ends:
                raise self._interrupted(f"after epoch {self.epoch}")

    def _start_phase(self) -> None:
        """Make the current phase's groups trainable (and freeze everything else), with a new optimizer
        and warmup-cosine schedule over the phase's steps."""
        phase, opts = self.phase, self.opts
        trainable = {id(p) for g in phase.groups.values() for p in (g["params"] if isinstance(g, dict) else g)}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        self.optimizer = build_optimizer(phase.groups, opts.optimizer, phase.lr, opts.weight_decay, opts.momentum,
                                         betas=opts.betas, eps=opts.eps)
        self.scheduler = warmup_cosine(self.optimizer, phase.epochs * self.steps_per_epoch,
                                       round(opts.warmup_epochs * self.steps_per_epoch) + opts.warmup_steps,
                                       opts.min_lr_ratio)

    def _next_phase(self) -> None:
        self.phase_idx, self.phase_epoch = self.phase_idx + 1, 0
        self.optimizer = self.scheduler = None

    def _wrap(self, module: nn.Module) -> nn.Module:
        """DDP under torchrun, for steps that leave gradient averaging to it; else ``module`` itself."""
        if world()[1] == 1 or not getattr(self.step, "ddp", True):
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)

    # -- epochs ----------------------------------------------------------------------------------------

    def _train_epoch(self, forward: nn.Module) -> TrainStats:
        """One pass over the training data (continuing a stopped epoch, after a mid-epoch resume). A signal
        ends it after the current step (:meth:`_stop_mid_epoch`); a NaN/inf loss, at once (:meth:`_nonfinite`)."""
        epoch, loader, opts = self.epoch + 1, self.train_loader, self.opts
        if getattr(loader, "generator", None) is not None:  # the data order follows from (seed, epoch)
            loader.generator.manual_seed(rank_seed(opts.seed * 1_000_003 + epoch))
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        try:
            stats = run_epoch(
                forward, loader, self.optimizer, self.step, device=self.device, precision=opts.precision,
                scaler=self.scaler, scheduler=self.scheduler, grad_clip=opts.grad_clip, log_every=opts.log_every,
                global_step=self.global_step, on_log=self._log_step, progress=self.progress,
                desc=f"epoch {epoch} ({self.phase.name})", should_stop=self._stop_requested,
                skip_batches=self.skip, after_skip=self.after_skip, carry=self.carry,
            )
        except NonFiniteLossError as e:
            raise self._nonfinite(e, epoch) from None
        self.global_step += stats.steps - self.skip
        self.skip, self.carry, self.after_skip = 0, None, None
        sync_buffers(self.model)
        if stats.interrupted:
            self._stop_mid_epoch(stats)
        return stats

    def _end_epoch(self, stats: TrainStats) -> None:
        """After a complete epoch: validate, record and report it, save ``last.pt`` (and ``best.pt``, if
        the validation score is the best so far)."""
        val = self.validate(self.forward)
        score = val.metrics[self.opts.best_metric]
        self.history.append({"epoch": self.epoch, "phase": self.phase_idx,
                             **{f"train_{k}": v for k, v in stats.metrics.items()},
                             **{f"val_{k}": v for k, v in val.metrics.items()},
                             "images_per_s": stats.images_per_s, "seconds": stats.seconds})
        self._write_epoch(stats, val)
        is_best = score > self.best_score
        if is_best:
            self.best_score, self.best_epoch = score, self.epoch
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.epoch, val.result)
        self._save_last()
        if self.main and is_best:
            _link_or_copy(self.last_path, self.best_path)
        self._flush()
        if self.main:
            log.info("epoch %d/%d (%s): train %s | val %s | %.0f img/s | checkpoint %s%s", self.epoch,
                     self.total_epochs, self.phase.name, _fmt(stats.metrics), _fmt(val.metrics), stats.images_per_s,
                     self.last_path, " (best)" if is_best else "")
        self.bar.set_postfix({f"val_{self.opts.best_metric}": f"{score:.3f}", "best": f"{self.best_score:.3f}"})
        self.bar.update(1)

    # -- TensorBoard -----------------------------------------------------------------------------------

    def _log_step(self, s: StepLog) -> None:
        if self.writer is not None:
            for name, value in s.metrics.items():
                self.writer.add_scalar(f"train/{name}_step", value, s.step)
            self.writer.add_scalar("throughput/images_per_s", s.images_per_s, s.step)
            for name, lr in s.lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, s.step)

    def _write_epoch(self, stats: TrainStats, val: Validation) -> None:
        if self.writer is not None:
            for split, values in (("train", stats.metrics), ("val", val.metrics)):
                for name, value in values.items():
                    self.writer.add_scalar(f"{name}/{split}", value, self.epoch)
            self.writer.add_scalar("throughput/epoch_images_per_s", stats.images_per_s, self.epoch)
            for tag, render in val.figures.items():
                self.writer.add_image(tag, render(), self.epoch, dataformats="HWC")

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    # -- checkpoints -----------------------------------------------------------------------------------

    def _save_last(self, **extra) -> None:
        """``last.pt`` with the progress so far and ``extra``; rank 0 writes it. A collective: every
        rank's RNG states go in it."""
        rngs = rank_rng_states()
        if self.main:
            save_checkpoint(self.last_path, self._state(**extra, **rngs))

    def _state(self, **extra) -> dict[str, Any]:
        return {**(self.meta or {}), "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "scheduler": self.scheduler.state_dict(), "phase": self.phase_idx,
                "phase_epoch": self.phase_epoch, "epoch": self.epoch, "global_step": self.global_step,
                "best_metric": self.opts.best_metric, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "history": self.history, "classes": list(self.classes), "config": dict(self.config or {}),
                "rng": capture_rng_state(), "world_size": world()[1], **extra}

    # -- stopping: signals and NaN ---------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        """Whether any rank received a signal; a collective, so every rank stops at the same point."""
        return any_rank(bool(self.signals))

    def _stop_mid_epoch(self, stats: TrainStats) -> None:
        """Save ``last.pt`` where the stopped epoch got to (its step and running totals), then stop."""
        self._save_last(step_in_epoch=stats.steps, epoch_sums=stats.sums)
        barrier()  # every rank leaves together, after the checkpoint is complete
        self._flush()
        raise self._interrupted(f"at step {stats.steps}/{self.steps_per_epoch} of epoch {self.epoch + 1}")

    def _interrupted(self, where: str) -> TrainingInterrupted:
        signum = self.signals[0] if self.signals else signal.SIGTERM  # none here: another rank's signal
        return TrainingInterrupted(f"{signal.Signals(signum).name}: stopped {where}; checkpoint {self.last_path}",
                                   signum, self.last_path)

    def _nonfinite(self, error: NonFiniteLossError, epoch: int) -> NonFiniteLossError:
        """Save the weights at a NaN/inf loss as ``nonfinite.pt`` (each rank its own); the error to raise."""
        rank = world()[0]
        diag = self.ckpt_dir / f"nonfinite{'' if rank == 0 else f'-rank{rank}'}.pt"
        save_checkpoint(diag, {**(self.meta or {}), "model": self.model.state_dict(), "epoch": epoch,
                               "error": str(error), "classes": list(self.classes), "config": dict(self.config or {})})
        return NonFiniteLossError(f"{error}; the weights at that point are in {diag}, the last good "
                                  f"checkpoint is {self.last_path}")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
