"""Explanations: batched CAM methods (gradient-weighted and gradient-free), transformer-native methods
(LeGrad, attention rollout, gradient-weighted rollout: :mod:`sportsnet.cam.attention`), overlays, and
faithfulness metrics.

Knows nothing of datasets: boxes and labels come in as tensors. Each method is a class with its own
name (:attr:`CamExplainer.name`), built and called the same way (:class:`CamExplainer`);
:data:`EXPLAINERS` is built from the classes, and :func:`make_explainer` builds one by name or alias
(``explain.py --method``):

    from sportsnet.cam import GradCAMPlusPlus, make_explainer

    with GradCAMPlusPlus(model) as cam:                  # the family's default target layer
        out = cam(images, top_k=3)                       # out.maps: (B, 3, H, W) in [0, 1]
    with make_explainer(swin, "HiResCAM") as cam:        # pytorch-grad-cam's class names work too
        out = cam(images, targets=labels)                # channels-last stage: resolved from the model
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .ablationcam import AblationCAM
from .attention import AttentionRollout, GradientRollout, LeGrad
from .class_activation import CAM
from .eigencam import KPCACAM, EigenCAM, EigenGradCAM
from .explainer import (
    CamExplainer,
    CamOutput,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GradientWeightedCAM,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from .finercam import FinerCAM
from .fullgrad import FullGrad
from .gradient_free import GradientFreeCAM
from .guided import GuidedBackprop, GuidedGradCAM, guided_backprop
from .hooks import resolve_layer
from .layouts import LAYOUTS, LayoutError
from .scorecam import ISCAM, SSCAM, ScoreCAM
from .shapleycam import ShapleyCAM
from .smoothgrad import SmoothGradCAMpp
from .targets import default_target_layer

#: Every method's class, in the order tables list them: the gradient-weighted ones, then the others, then the
#: transformer-native ones (:attr:`CamExplainer.transformer_only`: they read a ViT's attention, and refuse other
#: models when built).
METHOD_CLASSES: tuple[type[CamExplainer], ...] = (
    GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, GradCAMElementWise, EigenGradCAM, SmoothGradCAMpp,
    FinerCAM, GuidedGradCAM, GuidedBackprop, FullGrad, ShapleyCAM, CAM, ScoreCAM, SSCAM, ISCAM, AblationCAM, EigenCAM,
    KPCACAM, LeGrad, AttentionRollout, GradientRollout,
)


def _registry() -> tuple[dict[str, type[CamExplainer]], dict[str, str]]:
    names: dict[str, type[CamExplainer]] = {}
    aliases: dict[str, str] = {}
    for cls in METHOD_CLASSES:
        if not cls.name or cls.name in names:
            raise RuntimeError(f"{cls.__name__}.name={cls.name!r} is empty or taken")
        names[cls.name] = cls
        for alias in (cls.__name__, *cls.aliases):
            if alias != cls.name:
                aliases[alias] = cls.name
    clash = set(names) & set(aliases)
    if clash:
        raise RuntimeError(f"aliases {sorted(clash)} are also method names")
    return names, aliases


#: Every method by its one spelling (``explain.py --method``, result files), built from the classes.
#: ALIASES: other spellings accepted by :func:`method_name`: each class's name (pytorch-grad-cam's and
#: torchcam's where they match, e.g. ``GradCAMPlusPlus``, ``XGradCAM``, ``HiResCAM``) and their others.
EXPLAINERS, ALIASES = _registry()


def method_name(method: str) -> str:
    """The one spelling of ``method``: a key of :data:`EXPLAINERS`, or an alias of one."""
    if method in EXPLAINERS:
        return method
    if method in ALIASES:
        return ALIASES[method]
    raise ValueError(f"method={method!r} is not one of {', '.join(EXPLAINERS)} (or a class name such as "
                     f"GradCAMPlusPlus)")


def make_explainer(model: nn.Module, method: str, target_layer=None, **options: Any) -> CamExplainer:
    """The explainer of ``method`` (a name or an alias, :func:`method_name`) for ``model``; ``options``
    are the class's keyword arguments (``size``, ``layout``, ``reshape``, the method's own)."""
    return EXPLAINERS[method_name(method)](model, target_layer, **options)


__all__ = ["ALIASES", "AblationCAM", "AttentionRollout", "CAM", "CamExplainer", "CamOutput", "EXPLAINERS",
           "EigenCAM", "EigenGradCAM", "FinerCAM", "FullGrad", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus",
           "GradientFreeCAM", "GradientRollout", "GradientWeightedCAM", "GuidedBackprop", "GuidedGradCAM",
           "HiResCAM", "ISCAM", "KPCACAM", "LAYOUTS", "LayerCAM", "LayoutError", "LeGrad", "METHOD_CLASSES", "SSCAM",
           "ScoreCAM", "ShapleyCAM", "SmoothGradCAMpp", "XGradCAM", "default_target_layer", "guided_backprop",
           "make_explainer", "method_name", "resolve_layer"]
