"""The seeds' VGG19 transfer-learning models and recipes.

Both keep the VGG conv base under ``features`` (torchvision's names, so ImageNet weights load) and
replace the rest:

* ``frozen-bn-head`` (seed 000's recipe): ``Dropout2d`` on the conv map, ``AdaptiveAvgPool2d`` (7 x 7
  unless ``pool`` says otherwise) + flatten, then a new classifier of Dropout / Linear (Xavier) /
  BatchNorm1d / ReLU; the first ``freeze_layers`` (default 15) modules of ``features`` stay frozen.
* ``reduce256-two-phase`` (seed 001's recipe): a 1x1 conv reducing 512 -> 256 channels (+ ReLU) after
  the conv base, then a Dropout classifier; trained in two phases: the new layers alone on a frozen
  base, then everything at a lower learning rate.

Either may have a one-channel (grayscale) stem.

The seeds' names ``seed000`` / ``seed001`` are still accepted by every function here that takes a
recipe (so configs saved under them keep working); :func:`canonical_recipe` maps them to the names above.

:func:`recipe_phases` turns a recipe into phases (name, epochs, learning rate, trainable parameter
groups) for :func:`sportsnet.engine.fit`.
"""
from __future__ import annotations

import torch
from torch import nn

from .vgg import CFGS, init_vgg_, make_layers, scaled

FROZEN_BN_HEAD = "frozen-bn-head"
REDUCE256_TWO_PHASE = "reduce256-two-phase"
RECIPES = (FROZEN_BN_HEAD, REDUCE256_TWO_PHASE)
# The seeds' names, from before the recipes were named for what they are.
RECIPE_ALIASES = {"seed000": FROZEN_BN_HEAD, "seed001": REDUCE256_TWO_PHASE}
FREEZE_DEFAULT = {FROZEN_BN_HEAD: 15, REDUCE256_TWO_PHASE: 0}


def canonical_recipe(name: str) -> str:
    """The recipe ``name`` stands for: one of :data:`RECIPES`, given itself or an old alias
    (``"seed000"`` -> ``"frozen-bn-head"``, ``"seed001"`` -> ``"reduce256-two-phase"``)."""
    if isinstance(name, str):
        if name in RECIPES:
            return name
        if name in RECIPE_ALIASES:
            return RECIPE_ALIASES[name]
    aliases = ", ".join(f"{old!r} for {new!r}" for old, new in RECIPE_ALIASES.items())
    raise ValueError(f"recipe={name!r} is not one of {RECIPES} (or the aliases {aliases})")


class SportsVGG(nn.Module):
    """``features`` (VGG conv base) -> ``neck`` (conv map to conv map) -> ``pool`` -> ``head``.

    ``forward_features`` returns the neck's output ``(B, C, H/32, W/32)``; ``forward_head`` the logits.
    """

    def __init__(self, features: nn.Sequential, neck: nn.Module, head: nn.Sequential, *, arch: str,
                 recipe: str, width: float, in_channels: int, pool: int = 7):
        super().__init__()
        self.arch, self.width, self.in_channels = arch, width, in_channels
        self.recipe = canonical_recipe(recipe)
        self.features = features
        self.neck = neck
        self.pool = nn.AdaptiveAvgPool2d((pool, pool))
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def new_modules(self) -> list[nn.Module]:
        """The layers the recipe adds on top of the (pretrained) conv base."""
        return [self.neck, self.head]


def _xavier_(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def sports_vgg19(
    recipe: str = REDUCE256_TWO_PHASE,
    num_classes: int = 100,
    *,
    width: float = 1.0,
    batch_norm: bool = False,
    grayscale: bool = False,
    dropout: float = 0.5,
    feature_dropout: float = 0.2,
    hidden: int = 1024,
    pool: int = 7,
) -> SportsVGG:
    """A seed's VGG19 model (random weights; then :func:`load_imagenet_weights` for the base).

    Args:
        recipe: one of :data:`RECIPES` or an alias (``"seed000"``, ``"seed001"``); see the module docstring.
        num_classes: outputs of the last Linear layer.
        width: scales every conv and hidden width (1.0 is the real VGG19).
        grayscale: a one-channel first conv (ImageNet weights then load as the sum of the RGB kernels).
        dropout: dropout before each Linear layer of the head.
        feature_dropout: ``Dropout2d`` probability on the conv map (``frozen-bn-head`` only).
        hidden: the head's hidden width at ``width=1`` (scaled by ``width``).
        pool: side of the adaptive average pool before the head: 7 as in the seeds (a head with
            weights per position), 1 for global average pooling (a head that is the same at every
            position, for which Grad-CAM is exactly CAM).
    """
    recipe = canonical_recipe(recipe)
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if not width > 0:
        raise ValueError(f"width={width} must be > 0")
    if not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool={pool!r} must be a positive integer (7: the seeds' head, 1: global average pooling)")
    in_channels = 1 if grayscale else 3
    features = make_layers(CFGS["vgg19"], batch_norm=batch_norm, width=width, in_channels=in_channels)
    init_vgg_(features)
    c, h = scaled(512, width), scaled(hidden, width)
    # head[0] is an nn.Identity in the slot of an nn.Flatten that forward_head made redundant (it flattens
    # already): dropping the slot would shift every later index, and keys such as head.2.weight would no
    # longer match the checkpoints saved so far.
    if recipe == FROZEN_BN_HEAD:
        neck: nn.Module = nn.Dropout2d(feature_dropout)
        head = nn.Sequential(
            nn.Identity(),
            nn.Dropout(dropout), nn.Linear(c * pool * pool, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(h, num_classes),
        )
    else:
        reduced = scaled(256, width)
        neck = nn.Sequential(nn.Conv2d(c, reduced, kernel_size=1), nn.ReLU(inplace=True))
        head = nn.Sequential(
            nn.Identity(),
            nn.Dropout(dropout), nn.Linear(reduced * pool * pool, h), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(h, num_classes),
        )
    _xavier_(neck)
    _xavier_(head)
    return SportsVGG(features, neck, head, arch="vgg19_bn" if batch_norm else "vgg19", recipe=recipe,
                     width=width, in_channels=in_channels, pool=pool)


def parameter_groups(model: SportsVGG, freeze_layers: int | str) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by group: ``"base"`` (conv base minus the first ``freeze_layers`` modules of
    ``features``; ``"all"`` freezes the whole base) and ``"head"`` (the recipe's new layers)."""
    depth = len(model.features)
    if freeze_layers == "all":
        freeze_layers = depth
    if not isinstance(freeze_layers, int) or not 0 <= freeze_layers <= depth:
        raise ValueError(
            f"freeze_layers={freeze_layers!r} must be an integer in [0, {depth}] "
            f"(the number of modules in this network's features) or 'all'"
        )
    base = [p for layer in model.features[freeze_layers:] for p in layer.parameters()]
    head = [p for m in model.new_modules() for p in m.parameters()]
    return {"base": base, "head": head} if base else {"head": head}


def recipe_phases(
    model: SportsVGG,
    *,
    lr: float,
    epochs: int = 10,
    freeze_layers: int | None = None,
    phase1_epochs: int = 5,
    phase2_epochs: int = 10,
    phase2_lr_factor: float = 0.1,
) -> list[dict]:
    """The training phases of ``model.recipe`` as dicts ``{name, epochs, lr, groups}``.

    ``frozen-bn-head``: one phase of ``epochs`` with the first ``freeze_layers`` (default 15) modules
    frozen. ``reduce256-two-phase``: ``"head"`` (``phase1_epochs``, ``lr``, base frozen), then
    ``"finetune"`` (``phase2_epochs``, ``lr * phase2_lr_factor``, everything but the first
    ``freeze_layers`` (default 0) modules). Phases with 0 epochs are left out.
    """
    recipe = canonical_recipe(model.recipe)
    freeze = FREEZE_DEFAULT[recipe] if freeze_layers is None else freeze_layers
    if recipe == FROZEN_BN_HEAD:
        phases = [dict(name="train", epochs=epochs, lr=lr, groups=parameter_groups(model, freeze))]
    else:
        if not phase2_lr_factor > 0:
            raise ValueError(f"phase2_lr_factor={phase2_lr_factor} must be > 0")
        phases = [
            dict(name="head", epochs=phase1_epochs, lr=lr, groups=parameter_groups(model, "all")),
            dict(name="finetune", epochs=phase2_epochs, lr=lr * phase2_lr_factor,
                 groups=parameter_groups(model, freeze)),
        ]
    for p in phases:
        if not isinstance(p["epochs"], int) or p["epochs"] < 0:
            raise ValueError(f"epochs of phase {p['name']!r} = {p['epochs']!r} must be a non-negative integer")
    phases = [p for p in phases if p["epochs"] > 0]
    if not phases:
        raise ValueError("every phase has 0 epochs: nothing to train")
    return phases
