"""Train the seeds' VGG19 on 100-Sports (or the offline synthetic set) and write a test report.

    python experiments/train_vgg19.py --data /path/to/sports100          # reduce256-two-phase, ImageNet weights
    python experiments/train_vgg19.py --data /path --recipe frozen-bn-head --grayscale
    python experiments/train_vgg19.py                                    # no dataset: the offline demo
    python experiments/train_vgg19.py --resume runs/<name>               # continue an interrupted run

Everything lands in runs/<name>/: TensorBoard events (tensorboard --logdir runs; a Grad-CAM grid of
fixed validation images every epoch), checkpoints/last.pt and best.pt, config.json, test_report.{json,md}
with the confusion matrix and per-class PNGs, and gradcam_grid.png from the best checkpoint. Any other
torchvision or timm backbone: experiments/train.py --arch (the same run, sportsnet.apps.supervised).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine import Phase
from ..models import RECIPE_ALIASES, RECIPES, canonical_recipe, load_imagenet_weights, recipe_phases, sports_vgg19
from ..models.sports_vgg import FROZEN_BN_HEAD, REDUCE256_TWO_PHASE
from ..models.weights import resolve_weights_file
from .config import flag_message, only_when, option
from .supervised import DEMO_BUDGET, RunConfig, main_of
from .supervised import resolve_config as supervised_config

log = logging.getLogger("train_vgg19")


_SHARED = {f.name: f for f in dataclasses.fields(RunConfig)}
_TWO_PHASE = ("recipe", (REDUCE256_TWO_PHASE,))


@dataclass
class TrainConfig(RunConfig):
    """train_vgg19.py's flags: the shared ones (:class:`~sportsnet.apps.supervised.RunConfig`) and VGG19's."""

    recipe: str = option("reduce256-two-phase", "frozen-bn-head: the first 15 conv-base layers frozen, a "
                         "Dropout/Linear/BatchNorm1d/ReLU head; reduce256-two-phase: a 1x1 512->256 reduction, "
                         "trained on a frozen base, then everything (old names seed000 / seed001 accepted)",
                         (*RECIPES, *RECIPE_ALIASES))
    weights: str = option("imagenet", "'imagenet' (hub cache / download), 'none', or a path to vgg19-dcbb9e9d.pth")
    width: float = option(1.0, "scales every conv and hidden width (1.0 = real VGG19)", bounds=">0")
    batch_norm: bool = option(False, "VGG19-BN conv base")
    grayscale: bool = option(False, "one-channel stem (pretrained RGB kernels summed) and grayscale input")
    freeze_layers: int = option(-1, "freeze the first N modules of features (-1: recipe default, 15 / 0)",
                                bounds=">=-1")
    dropout: float = option(0.5, "dropout before each Linear layer of the head", bounds="[0,1)")
    hidden: int = option(1024, "hidden width of the head (scaled by --width)", bounds=">=1")
    pool: int = option(7, "adaptive pool side before the head: 7 as in the seeds, 1 = global average pooling",
                       bounds=">=1")
    epochs: int = option(10, "epochs of frozen-bn-head's single phase", bounds=">=1",
                         applies=("recipe", (FROZEN_BN_HEAD,)))
    # The shared phase flags, which only the two-phase recipe has.
    phase1_epochs: int = only_when(_SHARED["phase1_epochs"], _TWO_PHASE, REDUCE256_TWO_PHASE)
    phase2_epochs: int = only_when(_SHARED["phase2_epochs"], _TWO_PHASE, REDUCE256_TWO_PHASE)
    phase2_lr_factor: float = only_when(_SHARED["phase2_lr_factor"], _TWO_PHASE, REDUCE256_TWO_PHASE)

    def build_model(self, num_classes: int, weights: Path | None = None) -> nn.Module:
        model = sports_vgg19(self.recipe, num_classes, width=self.width, batch_norm=self.batch_norm,
                             grayscale=self.grayscale, dropout=self.dropout, hidden=self.hidden, pool=self.pool)
        if weights is not None:
            report = load_imagenet_weights(model, weights)
            log.info("ImageNet weights from %s: %d tensors loaded, %d unused", report.path, len(report.loaded),
                     len(report.unused))
        return model

    def build_phases(self, model: nn.Module) -> list[Phase]:
        return [Phase(**p) for p in recipe_phases(
            model, lr=self.lr, epochs=self.epochs, freeze_layers=None if self.freeze_layers < 0 else self.freeze_layers,
            phase1_epochs=self.phase1_epochs, phase2_epochs=self.phase2_epochs,
            phase2_lr_factor=self.phase2_lr_factor)]

    def resolve_weights(self) -> Path | None:
        if self.weights == "none":
            return None
        with torch.device("meta"):
            arch = self.build_model(num_classes=2)
        try:
            return resolve_weights_file(arch, self.weights)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None

    def run_name(self) -> str:
        return f"vgg19-{self.recipe}-{self.data_tag()}"

    def describe(self, model: nn.Module) -> str:
        return f"{model.arch} ({self.recipe}, width {self.width:g})"

    def grayscale_input(self) -> bool:
        return self.grayscale

    def canonical(self) -> "TrainConfig":
        return dataclasses.replace(self, recipe=canonical_recipe(self.recipe))  # configs use the new names


# The offline demo: an eighth-width VGG19-BN from scratch on the synthetic set at 96 px, with a global-
# average-pooling head (pool=1). Explicit flags win. Why not the seeds' 7x7 head: it has weights per
# position, and Grad-CAM's channel weights (gradients averaged over positions) then lose where the
# evidence is: on the synthetic test split its maps pointed at the object 4% of the time (random maps:
# 10%) although the model used nothing but the object. With pool=1 Grad-CAM is exactly CAM, and 96 px
# gives the last conv block 6x6 maps (64 px: 4x4, too coarse to point with). Sized for a first run of
# at most 10 minutes on a 2-core CPU in fp32 (the README has the measured times): width 1/8 trains more
# than twice as fast as 1/4 and its maps point as well, and without dropout and label smoothing it
# reaches in 12 epochs what took 30 with them. NCHW, not channels-last: this narrow BatchNorm net
# trains faster in NCHW on CPUs with and without native bf16 (plain VGG19 is faster channels-last).
DEMO = dict(DEMO_BUDGET, width=0.125, batch_norm=True, pool=1, dropout=0.0, hidden=512, channels_last=False)


def resolve_config(argv=None) -> tuple[TrainConfig, dict | None]:
    """Flags -> config; the demo's defaults when there is no dataset; the saved config on --resume."""
    return supervised_config(TrainConfig, argv, DEMO, __doc__)


def check_config(cfg: TrainConfig) -> None:
    """One-line errors before any heavy work."""
    problems = []
    if cfg.image_size < 32:
        problems.append(f"--image-size {cfg.image_size} must be >= 32 (VGG halves it 5 times)")
    if cfg.weights != "none" and cfg.width != 1.0:
        problems.append(f"--weights {cfg.weights} needs --width 1.0 (got {cfg.width}); use --weights none for "
                        f"narrow models")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    with torch.device("meta"):  # a free dry run: the model and phase plan accept these flags
        try:
            cfg.build_phases(cfg.build_model(num_classes=2))
        except ValueError as e:
            raise SystemExit(f"error: {flag_message(e)}") from None


def main(argv=None) -> float:
    return main_of("train_vgg19", resolve_config, check_config, argv)


if __name__ == "__main__":
    main()
