"""Explanations: batched CAM methods (gradient-weighted and gradient-free), overlays, and
faithfulness metrics.

Knows nothing of datasets: boxes and labels come in as tensors. Every method is called the same way
(:class:`CamExplainer`); :func:`make_explainer` builds one by name (``explain.py --method``).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..ops import METHODS as GRADIENT_METHODS
from .ablationcam import AblationCAM
from .class_activation import CAM
from .eigencam import KPCACAM, EigenCAM, EigenGradCAM
from .explainer import CamExplainer, CamOutput, GradCAM
from .finercam import FinerCAM
from .fullgrad import FullGrad
from .guided import GuidedGradCAM, guided_backprop
from .hooks import default_target_layer, resolve_layer
from .scorecam import ISCAM, SSCAM, ScoreCAM
from .shapleycam import ShapleyCAM
from .smoothgrad import SmoothGradCAMpp

#: Every method by name: the gradient-weighted ones of the fused operator, then the others.
EXPLAINERS: dict[str, type[CamExplainer]] = {
    **{m: GradCAM for m in GRADIENT_METHODS},
    "eigengradcam": EigenGradCAM,
    "smoothgradcam++": SmoothGradCAMpp,
    "finercam": FinerCAM,
    "guided-gradcam": GuidedGradCAM,
    "fullgrad": FullGrad,
    "shapleycam": ShapleyCAM,
    "cam": CAM,
    "scorecam": ScoreCAM,
    "sscam": SSCAM,
    "iscam": ISCAM,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
    "kpcacam": KPCACAM,
}


def make_explainer(model: nn.Module, method: str, target_layer=None, size=None, **options: Any) -> CamExplainer:
    """The explainer of ``method`` (a key of :data:`EXPLAINERS`) for ``model``."""
    if method not in EXPLAINERS:
        raise ValueError(f"method={method!r} is not one of {', '.join(EXPLAINERS)}")
    cls = EXPLAINERS[method]
    if cls is GradCAM:
        return GradCAM(model, target_layer, method=method, size=size, **options)
    return cls(model, target_layer, size, **options)


__all__ = ["EXPLAINERS", "AblationCAM", "CAM", "CamExplainer", "CamOutput", "EigenCAM", "EigenGradCAM", "FinerCAM",
           "FullGrad", "GradCAM", "GuidedGradCAM", "ISCAM", "KPCACAM", "SSCAM", "ScoreCAM", "ShapleyCAM",
           "SmoothGradCAMpp", "default_target_layer", "guided_backprop", "make_explainer", "resolve_layer"]
