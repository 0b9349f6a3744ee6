"""The few-shot methods of finetune_clip.py under its two protocols.

- **validation**: every hyper-parameter a method has is chosen on the validation split (:data:`GRIDS`), the
  training length included (the best validation step is kept);
- **validation-free**: nothing sees the validation split. Each method runs with fixed hyper-parameters (its
  paper's defaults where it has them, :data:`FIXED`) and keeps its last step. LP++ (closed-form step sizes) and
  CLAP were designed for this; the others are what a user with K shots and no validation split gets.

:data:`PROTOCOL_NOTES` says, per method, what each protocol fixes and what validation picks; the results carry it.
Methods on cached features train on every view of each shot (its plain view and its augmented ones,
:class:`Shots`); CoOp learns its context on those features through the text tower; CLIP-LoRA trains both towers on
the shots' images, augmented afresh at every step.
"""
from __future__ import annotations

import copy
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data import LabeledSubset
from ..engine.features import extract_features, fit_logistic, head_accuracy, train_head
from ..hardware import autocast, make_grad_scaler
from ..models.adapters import ClipAdapter, LinearProbe, TipAdapter, wise_ft, zero_shot_linear
from ..models.clap import ZeroShotLinearProbe, clap_multipliers, fit_clap
from ..models.coop import CoOp
from ..models.gda import GDA
from ..models.lora import LoRAAttentionPool, LoRAMultiheadAttention, apply_lora
from ..models.lpp import LPPlusPlus, fit_lpp

METHODS = ("zero-shot", "linear-probe", "wise-ft", "clip-adapter", "tip-adapter", "tip-adapter-f", "lp++", "gda",
           "clap", "coop", "clip-lora")
PROTOCOLS = ("validation", "validation-free")
#: What the validation protocol searches: the L2 penalty of the linear probe (logistic regression by L-BFGS, from
#: the zero-shot head), the WiSE-FT mixing weight, lr x residual ratio for CLIP-Adapter, lr for Tip-Adapter-F's
#: keys, alpha x beta of both Tip-Adapters, and GDA's blend as multiples of its validation-free one.
GRIDS = {"l2": (1e-6, 1e-4, 1e-2), "wise_alpha": tuple(i / 10 for i in range(11)), "lr": (1e-3, 1e-2),
         "ratio": (0.2, 0.4, 0.6, 0.8), "tip_alpha": (0.1, 0.3, 1.0, 3.0, 10.0), "tip_beta": (1.0, 3.0, 5.5, 8.0, 12.0),
         "gda_alpha_x": (0.1, 0.3, 1.0, 3.0, 10.0)}
#: The validation-free protocol's hyper-parameters (the papers' defaults where they give them).
FIXED = {
    "linear-probe": {"l2": 1e-4},
    "wise-ft": {"l2": 1e-4, "alpha": 0.5},
    "clip-adapter": {"lr": 1e-3, "ratio": 0.2},
    "tip-adapter": {"alpha": 1.0, "beta": 5.5},
    "tip-adapter-f": {"alpha": 1.0, "beta": 5.5, "lr": 1e-3},
    "lp++": {"momentum": 0.9},
    "clap": {"lr": 0.1, "momentum": 0.9, "epochs": 300, "batch_size": 256},
    "coop": {"init": "a photo of a", "lr": 2e-3, "momentum": 0.9, "batch_size": 32},
    "clip-lora": {"rank": 2, "alpha": 1.0, "dropout": 0.25, "lr": 2e-4, "weight_decay": 1e-2, "batch_size": 32,
                  "prompt": "a photo of a {}."},
}
#: Per method: (what the validation protocol chooses on the validation split, what the validation-free one fixes).
PROTOCOL_NOTES = {
    "zero-shot": ("nothing (no training)", "nothing (no training)"),
    "linear-probe": ("L2 penalty", "L2 1e-4"),
    "wise-ft": ("L2 penalty, mixing weight", "L2 1e-4, mixing 0.5"),
    "clip-adapter": ("lr, residual ratio, training length", "lr 1e-3, ratio 0.2, all steps"),
    "tip-adapter": ("alpha, beta", "alpha 1, beta 5.5"),
    "tip-adapter-f": ("lr, alpha, beta, training length", "lr 1e-3, alpha 1, beta 5.5, all steps"),
    "lp++": ("training length", "nothing: closed-form step sizes, all steps"),
    "gda": ("blend alpha (x0.1 to x10 of the free one)",
            "alpha from the logits' spread (zero-shot's over GDA's on the shots)"),
    "clap": ("training length", "nothing: the paper's SGD schedule, multipliers from the shots"),
    "coop": ("training length", "context 'a photo of a', SGD lr 2e-3, all steps"),
    "clip-lora": ("training length", "rank 2, alpha 1, AdamW lr 2e-4, all steps"),
}


@dataclass
class Shots:
    """The few-shot training set: each shot's plain features, its augmented views' and its label."""

    feats: torch.Tensor  # (n, D) unit-norm, the plain (evaluation) transform
    labels: torch.Tensor  # (n,)
    views: torch.Tensor  # (V, n, D) unit-norm, augmented; V may be 0
    indices: list[int]  # the shots' indices in the training split (CLIP-LoRA reads their images)

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every view of every shot, with its label: what the heads on cached features train on."""
        return torch.cat([self.feats, *self.views]), self.labels.repeat(1 + len(self.views))

    def keys(self) -> torch.Tensor:
        """One unit-norm feature per shot, the mean of its views (Tip-Adapter's cache keys)."""
        return F.normalize(torch.cat([self.feats[None], self.views]).mean(0), dim=-1)


@dataclass
class Task:
    """Everything one draw (K shots, one seed) needs: the zero-shot classifier, the splits' features, the training
    budgets, and for CoOp and CLIP-LoRA the model and the images."""

    text_classifier: torch.Tensor  # (D, C) unit-norm columns, on the CPU
    logit_scale: float
    train: Shots
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    steps: int  # optimizer steps of the heads trained on features (CLIP-Adapter, Tip-Adapter-F, LP++)
    seed: int
    shots_per_class: int
    bundle: object = None  # sportsnet.models.clip.ClipBundle (CoOp, CLIP-LoRA)
    prompt_names: list[str] = field(default_factory=list)
    images: dict = field(default_factory=dict)  # "train" (augmenting), "valid", "test" datasets (CLIP-LoRA)
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    batch_size: int = 64
    workers: int = 0
    coop_steps: int = 200
    lora_steps_per_shot: int = 500
    curve: Callable[[str, int, float], None] = lambda method, step, loss: None


def run_methods(methods, task: Task, protocols=PROTOCOLS) -> dict[str, dict[str, dict]]:
    """``{method: {protocol: {"test", "val", "hparams", "seconds"}}}`` for this draw. ``seconds``: training time
    (for the validation protocol, every candidate's)."""
    return {method: RUNNERS[method](task, set(protocols)) for method in methods}


def _scored(head, task: Task, hparams: dict, val_acc: float | None = None, seconds: float | None = None) -> dict:
    """A head's result: test accuracy, and the validation accuracy it was chosen by (None: validation-free)."""
    r = {"test": head_accuracy(head, *task.test), "val": val_acc, "hparams": hparams}
    if seconds is not None:
        r["seconds"] = seconds
    return r


def _best(candidates, task: Task):
    """``(head, hparams, validation accuracy)`` of the best candidate (the first on ties)."""
    scored = [(head, hp, head_accuracy(head, *task.val)) for hp, head in candidates]
    return max(scored, key=lambda t: t[2])


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def _curve(task: Task, method: str):
    return lambda step, loss: task.curve(method, step, loss)


def zero_shot(task: Task, protocols) -> dict:
    head = zero_shot_linear(task.text_classifier, task.logit_scale)
    return {p: _scored(head, task, {}, head_accuracy(head, *task.val) if p == "validation" else None, 0.0)
            for p in protocols}


def _probe(task: Task, l2: float) -> LinearProbe:
    probe = LinearProbe(*task.text_classifier.shape, init=zero_shot_linear(task.text_classifier, task.logit_scale))
    fit_logistic(probe.linear, *task.train.all(), l2=l2)
    return probe


def linear_probe_and_wise_ft(task: Task, protocols, which: str) -> dict:
    zs = zero_shot_linear(task.text_classifier, task.logit_scale)
    out = {}
    if "validation" in protocols:
        (probe, hp, acc), secs = _timed(lambda: _best([({"l2": l2}, _probe(task, l2)) for l2 in GRIDS["l2"]], task))
        if which == "linear-probe":
            out["validation"] = _scored(probe, task, hp, acc, secs)
        else:
            mixes = [({**hp, "alpha": a}, wise_ft(zs, probe.linear, a)) for a in GRIDS["wise_alpha"]]
            (head, hp, acc), more = _timed(lambda: _best(mixes, task))
            out["validation"] = _scored(head, task, hp, acc, secs + more)
    if "validation-free" in protocols:
        fixed = FIXED[which]
        probe, secs = _timed(lambda: _probe(task, fixed["l2"]))
        head = probe if which == "linear-probe" else wise_ft(zs, probe.linear, fixed["alpha"])
        out["validation-free"] = _scored(head, task, fixed, seconds=secs)
    return out


def clip_adapter(task: Task, protocols) -> dict:
    feats, labels = task.train.all()

    def fit(lr, ratio, val, curve=None):
        torch.manual_seed(task.seed)
        head = ClipAdapter(task.text_classifier, task.logit_scale, ratio=ratio)
        train_head(head, feats, labels, steps=task.steps, lr=lr, weight_decay=1e-4, seed=task.seed, val=val,
                   on_step=curve)
        return head

    out = {}
    if "validation" in protocols:
        grid = itertools.product(GRIDS["lr"], GRIDS["ratio"])
        (head, hp, acc), secs = _timed(lambda: _best([({"lr": lr, "ratio": r}, fit(lr, r, task.val))
                                                      for lr, r in grid], task))
        out["validation"] = _scored(head, task, hp, acc, secs)
    if "validation-free" in protocols:
        fixed = FIXED["clip-adapter"]
        head, secs = _timed(lambda: fit(fixed["lr"], fixed["ratio"], None, _curve(task, "clip-adapter")))
        out["validation-free"] = _scored(head, task, fixed, seconds=secs)
    return out


def tip_adapter(task: Task, protocols, learn: bool) -> dict:
    name = "tip-adapter-f" if learn else "tip-adapter"
    feats, labels = task.train.all()

    def cache(lr, val, curve=None):
        head = TipAdapter(task.text_classifier, task.logit_scale, task.train.keys(), task.train.labels,
                          learn_keys=learn)
        if learn:
            train_head(head, feats, labels, steps=task.steps, lr=lr, weight_decay=0.0, seed=task.seed, val=val,
                       on_step=curve)
        return head

    def with_ab(head, a, b):
        h = copy.copy(head)  # shares keys/buffers; alpha and beta are plain attributes
        h.alpha, h.beta = a, b
        return h

    out = {}
    if "validation" in protocols:
        def search():
            tuned = []
            for lr in GRIDS["lr"] if learn else (None,):
                head = cache(lr, task.val)
                for a, b in itertools.product(GRIDS["tip_alpha"], GRIDS["tip_beta"]):
                    tuned.append(({"alpha": a, "beta": b} | ({"lr": lr} if learn else {}), with_ab(head, a, b)))
            return _best(tuned, task)

        (head, hp, acc), secs = _timed(search)
        out["validation"] = _scored(head, task, hp, acc, secs)
    if "validation-free" in protocols:
        fixed = FIXED[name]
        head, secs = _timed(lambda: with_ab(cache(fixed.get("lr"), None, _curve(task, name)), fixed["alpha"],
                                            fixed["beta"]))
        out["validation-free"] = _scored(head, task, fixed, seconds=secs)
    return out


def _last_and_best(method: str, fit, task: Task, protocols, hparams: dict) -> dict:
    """Methods trained once: the validation-free result is the last step; the validation one is the best validation
    step of the same (seeded, so identical) run. ``fit(val, curve)`` trains a fresh model, keeping the best step when
    given ``val``, and returns ``(head, info)``; the first run of the two logs its loss curve."""
    out = {}
    curve = _curve(task, method)
    if "validation-free" in protocols:
        (head, _), secs = _timed(lambda: fit(None, curve))
        out["validation-free"] = _scored(head, task, hparams, seconds=secs)
        curve = None
    if "validation" in protocols:
        (head, info), secs = _timed(lambda: fit(task.val, curve))
        out["validation"] = _scored(head, task, hparams | {k: v for k, v in info.items() if k != "val_acc"},
                                    info["val_acc"], secs)
    return out


def lpp(task: Task, protocols) -> dict:
    feats, labels = task.train.all()

    def fit(val, curve):
        head = LPPlusPlus(task.text_classifier, feats, labels, alpha=task.logit_scale)
        info = fit_lpp(head, feats, labels, steps=task.steps, momentum=FIXED["lp++"]["momentum"], val=val,
                       on_step=curve)
        return head, {"best_step": info["best_step"], "val_acc": info["val_acc"]}

    return _last_and_best("lp++", fit, task, protocols, {**FIXED["lp++"], "steps": task.steps})


def clap(task: Task, protocols) -> dict:
    feats, labels = task.train.all()
    fixed = FIXED["clap"]

    def fit(val, curve):
        head = ZeroShotLinearProbe(task.text_classifier, task.logit_scale)
        with torch.no_grad():
            lambdas = clap_multipliers(head(feats), labels)
        info = fit_clap(head, feats, labels, lambdas=lambdas, epochs=fixed["epochs"], lr=fixed["lr"],
                        momentum=fixed["momentum"], batch_size=fixed["batch_size"], seed=task.seed, val=val,
                        on_step=curve)
        return head, {"best_epoch": info["best_epoch"], "val_acc": info["val_acc"]}

    return _last_and_best("clap", fit, task, protocols, fixed)


def _spread(logits: torch.Tensor) -> float:
    return (logits - logits.mean(dim=1, keepdim=True)).std().item()


def gda(task: Task, protocols) -> dict:
    feats, labels = task.train.all()

    def fit():
        head = GDA(task.text_classifier, task.logit_scale, feats, labels, alpha=1.0)
        zs = task.logit_scale * feats @ task.text_classifier
        head.alpha = _spread(zs) / max(_spread(feats @ head.weight.T + head.bias), 1e-12)
        return head

    base, secs = _timed(fit)
    out = {}
    if "validation-free" in protocols:
        out["validation-free"] = _scored(base, task, {"alpha": base.alpha}, seconds=secs)
    if "validation" in protocols:
        def search():
            heads = []
            for x in GRIDS["gda_alpha_x"]:
                h = copy.copy(base)
                h.alpha = base.alpha * x
                heads.append(({"alpha": h.alpha, "alpha_x": x}, h))
            return _best(heads, task)

        (head, hp, acc), more = _timed(search)
        out["validation"] = _scored(head, task, hp, acc, secs + more)
    return out


@contextmanager
def _frozen_flags(model: torch.nn.Module):
    """Restore ``model``'s requires_grad flags afterwards (CoOp freezes the shared model it prompts)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


class _BestOnValidation:
    """The validation protocol's view of one training run: every ``every`` steps (and at the last) ``evaluate()`` is
    called, and the parameters ``params`` of the best accuracy are kept. Evaluating draws nothing from the training's
    random stream (so the run itself is the validation-free one), and its time is kept apart (``seconds``)."""

    def __init__(self, params, evaluate: Callable[[], float], every: int, steps: int, active: bool):
        self.params, self.evaluate, self.every, self.steps, self.active = list(params), evaluate, every, steps, active
        self.acc, self.step, self.weights, self.seconds = -1.0, 0, None, 0.0

    def __call__(self, step: int) -> None:
        if not self.active or (step % self.every and step != self.steps):
            return
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            acc = self.evaluate()
        self.seconds += time.perf_counter() - started
        if acc > self.acc:
            self.acc, self.step, self.weights = acc, step, [p.detach().clone() for p in self.params]

    def results(self, protocols, test: Callable[[], float], hparams: dict, seconds: float, loss: float) -> dict:
        """Validation-free: the last step, timed without the validation passes; validation: the best step."""
        out = {}
        if "validation-free" in protocols:
            out["validation-free"] = {"test": test(), "val": None, "hparams": hparams,
                                      "seconds": seconds - self.seconds, "train_loss": loss}
        if "validation" in protocols:
            if self.weights is not None:
                with torch.no_grad():
                    for p, w in zip(self.params, self.weights):
                        p.copy_(w)
            out["validation"] = {"test": test(), "val": self.acc, "hparams": hparams | {"best_step": self.step},
                                 "seconds": seconds, "train_loss": loss}
        return out


def _log_curve(task: Task, method: str, losses: list[torch.Tensor]) -> list[float]:
    """The training losses (kept on the device during training) read in one transfer and logged as the method's
    curve (steps from 1)."""
    values = torch.stack(losses).float().cpu().tolist()
    for step, value in enumerate(values, start=1):
        task.curve(method, step, value)
    return values


def _step(loss: torch.Tensor, opt, sched, scaler) -> None:
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()


def coop(task: Task, protocols) -> dict:
    fixed = FIXED["coop"]
    model, device = task.bundle.model, task.device
    feats, labels = (t.to(device) for t in task.train.all())
    val = tuple(t.to(device) for t in task.val)
    test = tuple(t.to(device) for t in task.test)
    steps = task.coop_steps

    def accuracy(prompts, split):
        with torch.no_grad(), autocast(device, task.precision):
            text = prompts.text_features()
        return ((split[0] @ text.T.float()).argmax(1) == split[1]).float().mean().item()

    started = time.perf_counter()
    with _frozen_flags(model):
        torch.manual_seed(task.seed)
        prompts = CoOp(model, task.bundle.tokenizer, task.prompt_names, init=fixed["init"],
                       logit_scale=task.logit_scale)
        opt = torch.optim.SGD([prompts.ctx], lr=fixed["lr"], momentum=fixed["momentum"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        scaler = make_grad_scaler(device, task.precision)
        g = torch.Generator().manual_seed(task.seed)
        bs = min(fixed["batch_size"], len(feats))
        tracker = _BestOnValidation([prompts.ctx], lambda: accuracy(prompts, val), max(1, steps // 8), steps,
                                    "validation" in protocols)
        losses = []
        for step in range(1, steps + 1):
            idx = torch.randperm(len(feats), generator=g)[:bs].to(device)
            with autocast(device, task.precision):
                loss = F.cross_entropy(prompts(feats[idx]).float(), labels[idx])
            _step(loss, opt, sched, scaler)
            losses.append(loss.detach())
            tracker(step)
        seconds = time.perf_counter() - started
        losses = _log_curve(task, "coop", losses)
        return tracker.results(protocols, lambda: accuracy(prompts, test), {**fixed, "steps": steps}, seconds,
                               losses[-1])


def lora_finetune(model: torch.nn.Module, params, tokens: torch.Tensor, loader, *, steps: int, logit_scale: float,
                  device: torch.device, precision: str, lr: float, weight_decay: float,
                  after_step: Callable[[int], None] = lambda step: None) -> list[torch.Tensor]:
    """Train the LoRA ``params`` of ``model`` (:func:`~sportsnet.models.lora.apply_lora` applied) for ``steps``
    mini-batches of ``loader``'s images against the class prompts ``tokens`` (cross-entropy of CLIP's scaled cosine
    logits; AdamW, cosine decay). Only the adapters are in training mode: the frozen model's batch-norm statistics
    (a ResNet tower's) stay as they are. Returns every step's loss, as detached tensors on the device (read
    afterwards: no synchronisation per step)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    scaler = make_grad_scaler(device, precision)
    adapters = [m for m in model.modules() if isinstance(m, (LoRAMultiheadAttention, LoRAAttentionPool))]
    step, losses = 0, []
    while step < steps:
        for images, labels in loader:
            if step == steps:
                break
            step += 1
            model.eval()
            for m in adapters:
                m.train()  # their dropout
            images, labels = images.to(device), labels.to(device)
            with autocast(device, precision):
                img = F.normalize(model.encode_image(images).float(), dim=-1)
                txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
                loss = F.cross_entropy(logit_scale * img @ txt.T, labels)
            _step(loss, opt, sched, scaler)
            losses.append(loss.detach())
            after_step(step)
    model.eval()
    return losses


def clip_lora(task: Task, protocols) -> dict:
    fixed = FIXED["clip-lora"]
    device, bundle = task.device, task.bundle
    started = time.perf_counter()
    torch.manual_seed(task.seed)
    model = copy.deepcopy(bundle.model)
    params = apply_lora(model, rank=fixed["rank"], alpha=fixed["alpha"], dropout=fixed["dropout"])
    tokens = bundle.tokenizer([fixed["prompt"].format(n) for n in task.prompt_names]).to(device)
    steps = task.lora_steps_per_shot * task.shots_per_class
    shots = LabeledSubset(task.images["train"], task.train.indices)
    loader = DataLoader(shots, batch_size=min(fixed["batch_size"], len(shots)), shuffle=True, drop_last=True,
                        num_workers=task.workers, generator=torch.Generator().manual_seed(task.seed))

    def accuracy(split: str) -> float:
        model.eval()
        with torch.no_grad(), autocast(device, task.precision):
            text = F.normalize(model.encode_text(tokens).float(), dim=-1)
        feats, labels = extract_features(lambda x: F.normalize(model.encode_image(x), dim=-1),
                                         DataLoader(task.images[split], batch_size=task.batch_size,
                                                    num_workers=task.workers),
                                         device=device, precision=task.precision, progress=False)
        return ((feats.to(device) @ text.T).argmax(1).cpu() == labels).float().mean().item()

    tracker = _BestOnValidation(params, lambda: accuracy("valid"), max(1, steps // 3), steps, "validation" in protocols)
    losses = lora_finetune(model, params, tokens, loader, steps=steps, logit_scale=task.logit_scale, device=device,
                           precision=task.precision, lr=fixed["lr"], weight_decay=fixed["weight_decay"],
                           after_step=tracker)
    seconds = time.perf_counter() - started
    losses = _log_curve(task, "clip-lora", losses)
    hp = {k: v for k, v in fixed.items() if k != "prompt"} | {"steps": steps}
    return tracker.results(protocols, lambda: accuracy("test"), hp, seconds, losses[-1])


RUNNERS = {
    "zero-shot": zero_shot,
    "linear-probe": lambda t, p: linear_probe_and_wise_ft(t, p, "linear-probe"),
    "wise-ft": lambda t, p: linear_probe_and_wise_ft(t, p, "wise-ft"),
    "clip-adapter": clip_adapter,
    "tip-adapter": lambda t, p: tip_adapter(t, p, learn=False),
    "tip-adapter-f": lambda t, p: tip_adapter(t, p, learn=True),
    "lp++": lpp,
    "gda": gda,
    "clap": clap,
    "coop": coop,
    "clip-lora": clip_lora,
}
