"""sportsnet: sports image classification (VGG19, CLIP) with fused Grad-CAM explanations."""

__version__ = "0.1.0"
