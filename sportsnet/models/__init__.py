"""Models: the hand-written VGG family and the seeds' VGG19 transfer-learning variants."""
from .sports_vgg import (
    RECIPE_ALIASES,
    RECIPES,
    SportsVGG,
    canonical_recipe,
    parameter_groups,
    recipe_phases,
    sports_vgg19,
)
from .vgg import VGG, make_layers, vgg11, vgg13, vgg16, vgg19
from .weights import LoadReport, hub_checkpoint_path, load_imagenet_weights

__all__ = [
    "LoadReport", "RECIPES", "RECIPE_ALIASES", "SportsVGG", "VGG", "canonical_recipe", "hub_checkpoint_path",
    "load_imagenet_weights", "make_layers", "parameter_groups", "recipe_phases", "sports_vgg19", "vgg11", "vgg13",
    "vgg16", "vgg19",
]
