"""Operators: the fused Grad-CAM epilogue (``fused_gradcam``), its reference, and which one is in use.

Knows nothing of models: it takes activation and gradient tensors and returns heatmaps.
"""
from .fused import backend, fused_gradcam
from .reference import METHODS, gradcam_reference

__all__ = ["METHODS", "backend", "fused_gradcam", "gradcam_reference"]
