"""Sanity checks for saliency maps: does a method's map depend on the model, and on the class?

- :func:`cascading_randomisation`: Adebayo et al. 2018 ("Sanity Checks for Saliency Maps"), as Quantus's
  ``ModelParameterRandomisation`` in its top-down order: the model's parameters are randomised cumulatively
  from the output down (:func:`randomisation_units`: layers re-initialised by their own ``reset_parameters``,
  seeded; lone parameters shuffled), and after chosen numbers of units (:func:`cascade_points`, the last one
  the whole model) every method explains the same images again. The similarity of each image's map to the
  trained model's, Spearman's rank correlation and SSIM (:func:`sportsnet.cam.quality.spearman`,
  :func:`~sportsnet.cam.quality.ssim`), per step.
- :func:`random_logit`: Sixt et al. 2020 ("When Explanations Lie"), as Quantus's ``RandomLogit``: the SSIM
  between the map of the explained class and the map of another class drawn at random (seeded) per image.

:func:`flags` names the methods that fail: the mean Spearman correlation over the cascade's steps (the area
under the similarity curve; the steps are log-spaced, so it weighs the top layers most, where the class is
decided) at least :data:`RANDOMISATION_THRESHOLD`, or a random-logit SSIM of at least
:data:`RANDOM_LOGIT_THRESHOLD` (class-agnostic maps, such as Eigen-CAM's and attention rollout's, fail this
one by construction).

An explanation is any ``explain(model, images, classes) -> (B, H, W)`` maps; the methods share the randomised
copy of the model (one deep copy, randomised step by step), and the similarities are computed batched on the
maps' device. The model passed in is never changed, and the global random state is restored.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .quality import spearman, ssim

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: A method whose maps keep, averaged over the cascade's steps, a mean Spearman rank correlation of at least
#: this with the trained model's maps is flagged: they barely depend on what the model learned. On the demo
#: VGG19 guided backpropagation stays near 1 until the whole model is randomised and Grad-CAM drops below 0.5
#: with the classifier alone (docs/explanations.md#sanity-checks has the numbers).
RANDOMISATION_THRESHOLD = 0.5
#: A method whose maps of two different classes have a mean SSIM of at least this is flagged as ignoring
#: the class.
RANDOM_LOGIT_THRESHOLD = 0.9


class _FirstUse(TorchFunctionMode):
    """Records, during one forward, the order in which the model's parameters are first passed to a torch
    function (a linear layer's weight, a projection's matmul, an embedding's addition)."""

    def __init__(self, params: dict[int, str]):
        super().__init__()
        self.params, self.order = params, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, torch.Tensor) and id(a) in self.params and self.params[id(a)] not in self.order:
                self.order[self.params[id(a)]] = len(self.order)
        return func(*args, **kwargs)


def randomisation_units(model: nn.Module, images: torch.Tensor) -> list[tuple[str, list[str]]]:
    """What the cascade randomises, from the output down: ``[(name, [parameter names])]``.

    A unit is a module that owns parameters and can re-initialise them (``reset_parameters``: linear,
    convolution, normalisation layers), or a lone parameter of a module that cannot (open_clip's class and
    position embeddings and output projection). Units are ordered by when the forward of ``images[:1]`` last
    first-uses their parameters, the latest first (parameters the forward never uses come last): the order of
    the computation, not of the modules' definition, so a projection applied after the blocks is randomised
    before them. Buffers (a zero-shot classifier's text embeddings) are not parameters and stay."""
    names = {id(p): n for n, p in model.named_parameters()}
    mode = _FirstUse(names)
    state = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), mode:
            model(images[:1])
    finally:
        for m, training in state:
            m.training = training
    units: list[tuple[str, list[str]]] = []
    for name, m in model.named_modules():
        own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters(recurse=False)]
        if not own:
            continue
        if callable(getattr(m, "reset_parameters", None)):
            units.append((name, own))
        else:
            units.extend((n, [n]) for n in own)
    return sorted(units, key=lambda unit: max(mode.order.get(n, -1) for n in unit[1]), reverse=True)


def cascade_points(units: int, steps: int) -> list[int]:
    """How many units are randomised at each step: ``steps`` counts from 1 to ``units`` (the whole model),
    spaced evenly on a log scale (the top units first, one at a time), without repeats."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps={steps!r} must be an integer >= 2 (the top unit first, the whole model last)")
    if units < 1:
        raise ValueError("the model has no parameters to randomise")
    return sorted({max(1, round(math.exp(i * math.log(units) / (steps - 1)))) for i in range(steps)})


def _randomise(modules: dict[str, nn.Module], params: dict[str, nn.Parameter], unit: tuple[str, list[str]],
               generator: torch.Generator) -> None:
    name, names = unit
    if name in modules:  # its own initialisation, drawn from the global generator (seeded by the caller)
        modules[name].reset_parameters()
        return
    p = params[names[0]]  # a lone parameter: its values kept, their arrangement lost
    with torch.no_grad():
        p.copy_(p.flatten()[torch.randperm(p.numel(), generator=generator).to(p.device)].view_as(p))


def cascading_randomisation(model: nn.Module, explainers: dict[str, Explain], images: torch.Tensor,
                            classes: torch.Tensor, *, steps: int = 5, seed: int = 0,
                            original: dict[str, torch.Tensor] | None = None) -> dict:
    """The cascading model-parameter randomisation test of every method in ``explainers``.

    ``classes`` ``(B,)`` are the classes explained (the same at every step); ``steps`` cascade points
    (:func:`cascade_points`) over :func:`randomisation_units`, the last one the whole model. ``original``: the
    methods' maps on the trained model, when already computed. Returns ``{"steps": [{"units": n, "of": the
    number of units, "unit": the last one randomised}, ...], "spearman": {method: (S, B)}, "ssim": {method:
    (S, B)}}``, one row per step.
    """
    units = randomisation_units(model, images)
    points = cascade_points(len(units), steps)
    if original is None:
        original = {m: explain(model, images, classes) for m, explain in explainers.items()}
    twin = copy.deepcopy(model)
    modules, params = dict(twin.named_modules()), dict(twin.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    spear: dict[str, list[torch.Tensor]] = {m: [] for m in explainers}
    struct: dict[str, list[torch.Tensor]] = {m: [] for m in explainers}
    done = 0
    with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for n in points:
            for unit in units[done:n]:
                _randomise(modules, params, unit, generator)
            done = n
            rows.append({"units": n, "of": len(units), "unit": units[n - 1][0]})
            twin.eval()
            for m, explain in explainers.items():
                maps = explain(twin, images, classes)
                spear[m].append(spearman(original[m], maps))
                struct[m].append(ssim(original[m], maps))
    return {"steps": rows, "spearman": {m: torch.stack(v) for m, v in spear.items()},
            "ssim": {m: torch.stack(v) for m, v in struct.items()}}


def other_classes(classes: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``(B,)``: for each class, another one drawn uniformly from the rest (seeded)."""
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} leaves no other class to compare with")
    offset = torch.randint(1, num_classes, classes.shape, generator=generator).to(classes.device)
    return (classes + offset) % num_classes


def random_logit(model: nn.Module, explainers: dict[str, Explain], images: torch.Tensor, classes: torch.Tensor,
                 num_classes: int, *, seed: int = 0, original: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """The random-logit test: ``{method: (B,)}`` SSIM between each image's map of ``classes`` and its map of a
    class drawn at random among the others."""
    others = other_classes(classes, num_classes, torch.Generator().manual_seed(seed))
    out = {}
    for m, explain in explainers.items():
        base = original[m] if original is not None else explain(model, images, classes)
        out[m] = ssim(base, explain(model, images, others))
    return out


def flags(cascade_spearman: dict[str, float], random_logit_ssim: dict[str, float]) -> dict[str, list[str]]:
    """``{method: [reasons]}`` for the methods that fail a check: ``cascade_spearman`` is each method's mean
    Spearman correlation over the cascade's steps and images, ``random_logit_ssim`` its mean random-logit SSIM."""
    out: dict[str, list[str]] = {}
    for m, rho in cascade_spearman.items():
        if rho >= RANDOMISATION_THRESHOLD:
            out.setdefault(m, []).append(f"maps barely change as the model is randomised (mean Spearman {rho:.2f} "
                                         f">= {RANDOMISATION_THRESHOLD})")
    for m, s in random_logit_ssim.items():
        if s >= RANDOM_LOGIT_THRESHOLD:
            out.setdefault(m, []).append(f"maps of another class look the same (SSIM {s:.2f} >= "
                                         f"{RANDOM_LOGIT_THRESHOLD})")
    return out
