"""Operators: the fused CAM epilogues (``fused_gradcam`` from activations and gradients,
``fused_weighted_cam`` from given channel weights), their references, and which backend is in use.

Knows nothing of models: it takes activation and gradient tensors and returns heatmaps.
"""
from .fused import backend, fused_gradcam, fused_weighted_cam
from .reference import METHODS, gradcam_reference, weighted_cam_reference

__all__ = ["METHODS", "backend", "fused_gradcam", "fused_weighted_cam", "gradcam_reference", "weighted_cam_reference"]
