"""``run_epoch`` (any :class:`TrainStep`) and ``evaluate``: one code path for fp32 / bf16 / fp16.

Precision is ``torch.autocast(enabled=...)`` plus a ``GradScaler`` that is enabled only for fp16, so
there are no twin branches. Metrics accumulate as device tensors; the host syncs (``.item()``) only
at log steps and at the end of the epoch.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..hardware import autocast, make_grad_scaler
from .distributed import all_reduce_sum, world


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt)


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(target[:, None])
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (detected at a log step)."""


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate of each param group, under the group's ``"name"`` (or its index)."""
    return {str(g.get("name", i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}


def check_finite(loss: float, what: str, step: int, optimizer: torch.optim.Optimizer, precision: str) -> None:
    """Raise :class:`NonFiniteLossError` naming the step, learning rates and precision."""
    if not math.isfinite(loss):
        lrs = ", ".join(f"{k}={v:.3g}" for k, v in group_lrs(optimizer).items())
        raise NonFiniteLossError(f"{what} is {loss} at step {step} (lr {lrs}, precision {precision})")


@dataclass
class StepLog:
    """What the loop reports at each log step (for TensorBoard and progress bars): the step's metrics
    averaged over the images since the last log step (``loss``, and e.g. ``acc1`` or ``temperature``)."""

    step: int  # global optimizer step
    metrics: dict[str, float]
    images_per_s: float
    lrs: dict[str, float]

    @property
    def loss(self) -> float:
        return self.metrics["loss"]

    @property
    def acc1(self) -> float:
        return self.metrics.get("acc1", math.nan)


@dataclass
class TrainStats:
    """One epoch (or the part of it that ran): ``metrics`` are means over its images."""

    metrics: dict[str, float]
    images: int
    steps: int
    seconds: float
    images_per_s: float
    logs: list[StepLog] = field(default_factory=list)
    interrupted: bool = False  # should_stop() ended the epoch early, after ``steps`` steps
    sums: dict[str, float] = field(default_factory=dict)  # running totals, to continue a stopped epoch

    @property
    def loss(self) -> float:
        return self.metrics["loss"]

    @property
    def acc1(self) -> float:
        return self.metrics.get("acc1", math.nan)

    @property
    def acc5(self) -> float:
        return self.metrics.get("acc5", math.nan)


class TrainStep(Protocol):
    """What one optimizer step computes, for :func:`run_epoch` (and :func:`~sportsnet.engine.fit`).

    Called with the model, one batch of the loader, the device, the precision and the gradient scaler,
    it accumulates the (scaled) gradients of its loss into ``.grad`` and returns its sums for the logs:
    ``"seen"`` (the images or pairs of the batch in this process) and per-metric totals over them,
    ``"loss"`` among them (e.g. the batch's mean loss times ``seen``); every other entry is averaged the
    same way (sum / seen). The loop does the rest: zeroing, unscaling and clipping, the optimizer and
    scheduler steps, then ``after_step(model)`` if the step has one. ``ddp``: whether ``fit`` should
    wrap the model in ``DistributedDataParallel`` under torchrun (a step that averages gradients over
    ranks itself says ``False``).
    """

    ddp: bool

    def __call__(self, model: nn.Module, batch: Any, *, device: torch.device, precision: str,
                 scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor | int]: ...


class SupervisedStep:
    """Images and class targets: forward under autocast, ``loss_fn(logits, target)``, scaled backward.

    ``batch_transform`` runs on each batch once it is on the device (augmentation on the training
    device: ``sportsnet.data.batch_aug``); its random draws come from the global torch generator, whose
    state checkpoints keep, so a resumed epoch augments as the uninterrupted one did. If it has a
    ``recycle(batch)`` method, each transformed batch is handed back once its backward is done.
    Reports ``loss``, ``acc1`` and ``acc5``.
    """

    ddp = True

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, *,
                 channels_last: bool = True,
                 batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.channels_last = channels_last
        self.batch_transform = batch_transform
        self.recycle = getattr(batch_transform, "recycle", None)

    def __call__(self, model: nn.Module, batch, *, device: torch.device, precision: str,
                 scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor | int]:
        images, target = batch
        images = to_device(images, device, self.channels_last)
        if self.batch_transform is not None:
            images = self.batch_transform(images)
        target = target.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images)
            loss = self.loss_fn(logits, target)
        scaler.scale(loss).backward()
        if self.recycle is not None:
            self.recycle(images)
        b = target.shape[0]
        c1, c5 = _topk_correct(logits.detach(), target, (1, 5))
        return {"loss": loss.detach().float() * b, "acc1": c1, "acc5": c5, "seen": b}


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except frozen BatchNorm layers: they keep their (pretrained) running statistics,
    which train mode would overwrite."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and not m.weight.requires_grad:
            m.eval()


def run_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    step: TrainStep,
    *,
    device: torch.device,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float = 0.0,
    log_every: int = 50,
    global_step: int = 0,
    on_log: Callable[[StepLog], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    should_stop: Callable[[], bool] | None = None,
    skip_batches: int = 0,
    after_skip: Callable[[], None] | None = None,
    carry: dict[str, float] | None = None,
) -> TrainStats:
    """One pass over ``loader``, one optimizer step per batch: ``step`` (a :class:`TrainStep`) puts the
    gradients in place, then optional clipping, the (scaled) optimizer step and the scheduler step.

    Every ``log_every`` steps (and at the end) the running metrics are read back (the one host sync of
    the window), the loss is checked for NaN/inf (:class:`NonFiniteLossError` names the step, learning
    rates and precision), and a :class:`StepLog` goes to ``on_log``. Group learning rates are logged
    under each group's ``"name"``.

    Stopping and continuing an epoch: ``should_stop()`` is asked after every optimizer step; when it
    says yes the epoch ends there (``interrupted=True``, ``sums`` holds the running totals).
    ``skip_batches`` draws and discards the first batches of ``loader`` (the same ones, when its
    order is seeded) and then calls ``after_skip`` (e.g. to restore RNG states); ``carry`` is the
    stopped epoch's ``sums``. Together they continue the epoch exactly where it stopped.
    """
    set_train_mode(model)
    scaler = scaler or make_grad_scaler(device, precision)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    after_step = getattr(step, "after_step", None)
    # A stopped epoch's totals are global (summed over ranks): rank 0 carries them on.
    carry = carry if carry and world()[0] == 0 else {}
    sums: dict[str, torch.Tensor] = {k: torch.tensor(float(v), device=device) for k, v in carry.items() if k != "seen"}
    window: dict[str, torch.Tensor] = {}
    seen, steps, window_seen = int(carry.get("seen", 0)), skip_batches, 0
    logs: list[StepLog] = []
    total = len(loader) if hasattr(loader, "__len__") else None
    batches = iter(loader)
    for _ in range(skip_batches):  # fast-forward: same batches, same worker RNG streams, not trained on
        next(batches)
    if after_skip is not None:
        after_skip()
    t_start = t_window = time.perf_counter()
    interrupted = False
    bar = tqdm(batches, total=total, initial=skip_batches, desc=desc, leave=False, disable=not progress,
               dynamic_ncols=True)
    for batch in bar:
        optimizer.zero_grad(set_to_none=True)
        out = step(model, batch, device=device, precision=precision, scaler=scaler)
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            with warnings.catch_warnings():
                # fp16: the scaler skips the optimizer step on overflow by design; the schedule moves on.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
                scheduler.step()
        if after_step is not None:
            after_step(model)

        b = int(out["seen"])
        for k, v in out.items():
            if k != "seen":
                v = torch.as_tensor(v, device=device).float()
                sums[k] = sums[k] + v if k in sums else v.clone()
                window[k] = window[k] + v if k in window else v.clone()
        seen += b
        window_seen += b
        steps += 1
        if steps % log_every == 0 or steps == total:
            now = time.perf_counter()
            # The one host sync of the window: read back the running metrics.
            means = dict(zip(window, (torch.stack(list(window.values())) / max(window_seen, 1)).tolist()))
            check_finite(means["loss"], "training loss", global_step + steps, optimizer, precision)
            entry = StepLog(global_step + steps, means, window_seen / max(now - t_window, 1e-9), group_lrs(optimizer))
            logs.append(entry)
            if on_log is not None:
                on_log(entry)
            shown = {k: f"{v:.3f}" for k, v in list(means.items())[:2]}
            bar.set_postfix(shown | {"img_s": f"{entry.images_per_s:.0f}"})
            window, window_seen, t_window = {}, 0, now
        if should_stop is not None and should_stop() and steps != total:
            interrupted = True
            break
    bar.close()
    if seen == 0 and steps == skip_batches:
        raise ValueError("the training loader yielded no batches (is the dataset smaller than one batch with "
                         "drop_last?)")
    seconds = time.perf_counter() - t_start
    done = max(seen - int(carry.get("seen", 0)), 1)
    # Metrics of all ranks (the identity in one process).
    names = sorted(sums)  # the same order on every rank
    totals = all_reduce_sum(torch.stack([*(sums[k] for k in names), torch.tensor(float(seen), device=device)]))
    *values, seen = totals.tolist()
    seen = int(seen)
    metrics = {k: v / seen for k, v in zip(names, values)}
    return TrainStats(metrics, seen, steps, seconds, done / seconds, logs, interrupted,
                      {**dict(zip(names, values)), "seen": seen})


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    channels_last: bool = True,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **kwargs,
) -> TrainStats:
    """:func:`run_epoch` with a :class:`SupervisedStep` (images, class targets, ``loss_fn``); the
    keyword arguments are :func:`run_epoch`'s."""
    return run_epoch(model, loader, optimizer, SupervisedStep(loss_fn, channels_last=channels_last,
                                                              batch_transform=batch_transform), **kwargs)


@dataclass
class EvalResult:
    """Metrics of one evaluation pass. ``confusion[t, p]`` counts images of class t predicted as p."""

    loss: float
    acc1: float
    acc5: float
    images: int
    confusion: torch.Tensor  # (C, C) int64 on CPU

    @classmethod
    def from_logits(cls, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> "EvalResult":
        """Metrics of precomputed ``(N, C)`` logits (e.g. from cached features), loss = cross-entropy."""
        logits, targets = logits.float(), targets.long().to(logits.device)
        if logits.dim() != 2 or logits.shape[1] != num_classes or len(logits) != len(targets):
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not fit "
                             f"{num_classes} classes")
        c1, c5 = _topk_correct(logits, targets, (1, 5))
        n = max(1, len(targets))
        confusion = torch.bincount(targets * num_classes + logits.argmax(1), minlength=num_classes ** 2)
        return cls(nn.functional.cross_entropy(logits, targets).item() if len(targets) else float("nan"),
                   c1.item() / n, c5.item() / n, len(targets), confusion.view(num_classes, num_classes).cpu())

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        """(C,) accuracy of each class; NaN for classes with no images."""
        support = self.confusion.sum(1)
        return self.confusion.diagonal().double() / support.double().where(support > 0, torch.nan)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    num_classes: int,
    precision: str = "fp32",
    channels_last: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "eval",
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Top-1/top-5 accuracy, mean loss (plain cross-entropy unless ``loss_fn``) and the confusion matrix.

    Runs in eval mode and restores the model's previous mode. Targets must be in ``[0, num_classes)``.
    ``batch_transform`` runs on each batch once it is on ``device`` (and its ``recycle``, if any,
    gets the batch back after the forward pass).
    """
    was_training = model.training
    model.eval()
    loss_fn = loss_fn or nn.functional.cross_entropy
    zero = torch.zeros((), device=device)
    loss_sum, correct1, correct5 = zero.clone(), zero.clone(), zero.clone()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    seen = 0
    total = len(loader) if hasattr(loader, "__len__") else None
    recycle = getattr(batch_transform, "recycle", None)
    try:
        batches = tqdm(loader, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
        for images, target in batches:
            images = to_device(images, device, channels_last)
            if batch_transform is not None:
                images = batch_transform(images)
            target = target.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(images)
            if recycle is not None:
                recycle(images)
            logits = logits.float()
            if logits.shape[1] != num_classes:
                raise ValueError(f"model gives {logits.shape[1]} logits but num_classes={num_classes}")
            loss_sum += loss_fn(logits, target) * target.shape[0]
            c1, c5 = _topk_correct(logits, target, (1, 5))
            correct1 += c1
            correct5 += c5
            # index_add_, not bincount: bincount reads its input's max on the host (a CUDA sync per batch).
            cells = target * num_classes + logits.argmax(1)
            confusion.index_add_(0, cells, torch.ones_like(cells))
            seen += target.shape[0]
    finally:
        model.train(was_training)
    # Shards of a multi-process evaluation (ShardSampler) add up to the whole set.
    totals = all_reduce_sum(torch.stack([loss_sum, correct1, correct5, torch.tensor(float(seen), device=device)]))
    all_reduce_sum(confusion)
    *totals, seen = totals.tolist()
    seen = int(seen)
    if seen == 0:
        raise ValueError("the evaluation loader yielded no batches")
    loss_v, acc1, acc5 = (v / seen for v in totals)
    return EvalResult(loss_v, acc1, acc5, seen, confusion.view(num_classes, num_classes).cpu())
