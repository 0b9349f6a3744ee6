"""Explanations: the batched Grad-CAM-family explainer, overlays, and faithfulness metrics.

Knows nothing of datasets: boxes and labels come in as tensors.
"""
from .explainer import CamOutput, GradCAM
from .hooks import default_target_layer, resolve_layer

__all__ = ["CamOutput", "GradCAM", "default_target_layer", "resolve_layer"]
