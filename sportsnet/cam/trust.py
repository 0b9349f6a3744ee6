"""One trust report for any classifier through the API: every method x every metric, with the sanity checks,
on a batch of images (what ``explain.py --method all --robustness --sanity`` reports for a dataset).

    from sportsnet.cam.trust import trust_report

    report = trust_report(model, images, boxes=boxes)            # every method that can read the model
    report["metrics"]["pointing_game/gradcam"], report["sanity"]["flags"], report["refused"]

The metrics are :func:`sportsnet.cam.metrics.score_explanations`' and
:func:`sportsnet.cam.quality.score_quality`'s, averaged over the images; the sanity checks
(:func:`sanity_report`) are :mod:`sportsnet.cam.sanity`'s, each method's maps remade on the randomised copies.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .metrics import RunningMeans, score_explanations
from .quality import score_quality
from .sanity import (
    RANDOM_LOGIT_THRESHOLD,
    RANDOMISATION_THRESHOLD,
    Explain,
    cascading_randomisation,
    flags,
    random_logit,
)


def explain_function(method: str, target_layer=None, **options: Any) -> Explain:
    """``explain(model, images, classes) -> (B, H, W)``: ``method``'s maps of ``classes`` from an explainer
    built for the model it is given (the sanity checks call it on each randomised copy)."""
    from . import make_explainer

    def explain(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with make_explainer(model, method, target_layer=target_layer, **options) as cam:
            return cam(images, targets=classes).maps[:, 0]

    return explain


def map_functions(cams: dict[str, Any]) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Each built explainer as ``(images, classes) -> (B, H, W)`` maps (the sensitivities' explainers)."""
    return {m: (lambda x, c, cam=cam: cam(x, targets=c).maps[:, 0]) for m, cam in cams.items()}


def sanity_report(model: nn.Module, explainers: dict[str, Explain], images: torch.Tensor, classes: torch.Tensor,
                  num_classes: int, *, steps: int = 5, seed: int = 0) -> tuple[dict, dict[str, float]]:
    """The sanity checks of every method: ``(report, columns)``. ``report``: ``images``, the cascade's
    ``steps``, per method the ``spearman`` and ``ssim`` curves (means over the images, one value per step),
    ``flags`` (:func:`sportsnet.cam.sanity.flags`) and the ``thresholds``; ``columns``: per method
    ``sanity_spearman/<m>`` and ``sanity_ssim/<m>`` (the curves' means over the steps, what is flagged) and
    ``random_logit_ssim/<m>``."""
    original = {m: explain(model, images, classes) for m, explain in explainers.items()}
    cascade = cascading_randomisation(model, explainers, images, classes, steps=steps, seed=seed, original=original)
    logit = random_logit(model, explainers, images, classes, num_classes, seed=seed, original=original)
    curves = {kind: {m: v.float().mean(dim=1).tolist() for m, v in cascade[kind].items()}
              for kind in ("spearman", "ssim")}
    columns = {}
    for m in explainers:
        columns[f"sanity_spearman/{m}"] = sum(curves["spearman"][m]) / len(cascade["steps"])
        columns[f"sanity_ssim/{m}"] = sum(curves["ssim"][m]) / len(cascade["steps"])
        columns[f"random_logit_ssim/{m}"] = float(logit[m].float().mean())
    failed = flags({m: columns[f"sanity_spearman/{m}"] for m in explainers},
                   {m: columns[f"random_logit_ssim/{m}"] for m in explainers})
    report = {"images": len(images), "steps": cascade["steps"], **curves, "flags": failed,
              "thresholds": {"randomisation_spearman": RANDOMISATION_THRESHOLD,
                             "random_logit_ssim": RANDOM_LOGIT_THRESHOLD}}
    return report, columns


def trust_report(model: nn.Module, images: torch.Tensor, classes: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, *, methods: Sequence[str] | None = None, target_layer=None,
                 options: dict[str, dict[str, Any]] | None = None, tolerance: int = 0, deletion_steps: int = 16,
                 road: bool = False, robustness: bool = True, sensitivity_samples: int = 10, sanity: bool = True,
                 sanity_steps: int = 5, seed: int = 0) -> dict:
    """Every method in ``methods`` (default: all of :data:`sportsnet.cam.EXPLAINERS`) on ``images`` ``(B, 3, H,
    W)`` (model inputs), explaining ``classes`` ``(B,)`` (default: the predicted ones): ``{"methods": [...],
    "refused": {method: why}, "metrics": {"<metric>/<method>": mean over the images}, "sanity": report or
    None}``.

    A method that cannot read the model (a transformer-native one on a CNN, CAM without its head) is refused
    with its reason; an unknown name is an error. ``boxes`` ``(B, 4)`` add the localisation metrics;
    ``options`` are per-method explainer options (e.g. ``{"sscam": {"num_samples": 4}}``); ``robustness`` the
    sensitivities and faithfulness correlation, ``road`` ROAD, ``sanity`` the sanity checks
    (:func:`sanity_report`). ``model`` in eval mode; call it under ``torch.autocast`` for a lower precision.
    """
    from . import EXPLAINERS, make_explainer, method_name

    names = list(EXPLAINERS) if methods is None else [method_name(m) for m in methods]
    options = options or {}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = model(images)
    classes = logits.argmax(dim=1) if classes is None else classes.to(images.device)
    cams, refused, maps = {}, {}, {}
    for m in names:
        try:
            cams[m] = make_explainer(model, m, target_layer=target_layer, **options.get(m, {}))
            maps[m] = cams[m](images, targets=classes).maps[:, 0]
        except ValueError as e:
            refused[m] = str(e)
            cams.pop(m, None)
    means = RunningMeans()
    if maps:
        means.update(score_explanations(model, images, maps, classes, boxes, tolerance=tolerance,
                                        deletion_steps=deletion_steps, generator=generator, road=road))
        means.update(score_quality(model, images, maps, classes, generator=generator, faithfulness=robustness,
                                   samples=sensitivity_samples, explainers=map_functions(cams) if robustness else None))
    report = {"methods": list(cams), "refused": refused, "metrics": means.means(), "sanity": None}
    if sanity and cams:
        explainers = {m: explain_function(m, target_layer, **options.get(m, {})) for m in cams}
        report["sanity"], columns = sanity_report(model, explainers, images, classes,
                                                  logits.shape[1], steps=sanity_steps, seed=seed)
        report["metrics"].update(columns)
    for cam in cams.values():
        cam.close()
    return report
