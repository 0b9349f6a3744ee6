"""Train any torchvision or timm classifier on 100-Sports (or the offline synthetic set) with a transfer recipe,
and write a test report.

    python experiments/train.py --arch resnet50 --data /path/to/sports100         # ImageNet weights, 224 px
    python experiments/train.py --arch timm:efficientnet_b0 --data /path/to/sports100
    python experiments/train.py --arch timm:vit_small_patch16_224 --data /path --lr 5e-4
    python experiments/train.py --arch convnext_tiny                              # no dataset: the offline demo
    python experiments/train.py --resume runs/<name>                              # continue an interrupted run

The recipe: the library's model with a new head for the dataset's classes; ``--phase1-epochs`` train the
head alone on the frozen network, then ``--phase2-epochs`` train everything at ``--lr`` times
``--phase2-lr-factor``. The run is train_vgg19.py's (sportsnet.apps.supervised): the same data path,
precision and channels-last choice, checkpoints and resume, torchrun, TensorBoard (with a Grad-CAM grid at
the family's default layer), and the run folder explain.py reads (``--checkpoint runs/<name>``).
Without a dataset it is the offline demo: the synthetic set at the VGG19 demo's budget (96 px, 12 epochs,
random weights: none can be downloaded offline).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine import Phase
from ..models.backbones import build_classifier, head_parameters, image_stats, parse_arch, pretrained_file
from ..models.download import WeightsUnavailable
from .config import option
from .supervised import DEMO_BUDGET, RunConfig, main_of
from .supervised import resolve_config as supervised_config

log = logging.getLogger("train")


@dataclass
class BackboneConfig(RunConfig):
    """train.py's flags: the shared ones (:class:`~sportsnet.apps.supervised.RunConfig`) and the backbone's."""

    arch: str = option("resnet50", "a torchvision or timm classifier: NAME (torchvision's if it has one, else timm's), "
                                   "torchvision:NAME or timm:NAME; e.g. resnet50, efficientnet_b0, convnext_tiny, "
                                   "timm:vit_small_patch16_224")
    weights: str = option("imagenet", "'imagenet' (the library's own file: torch hub cache for torchvision, Hugging "
                                      "Face cache for timm; downloaded if missing), 'none', or a local file of the "
                                      "library's ImageNet state dict")
    drop_rate: float = option(0.0, "dropout before the head (timm models)", bounds="[0,1)")

    def build_model(self, num_classes: int, weights: Path | None = None) -> nn.Module:
        return build_classifier(self.arch, num_classes, weights=weights or "none", image_size=self.image_size,
                                drop_rate=self.drop_rate)

    def build_phases(self, model: nn.Module) -> list[Phase]:
        head = head_parameters(model)
        ids = {id(p) for p in head}
        base = [p for p in model.parameters() if id(p) not in ids]
        phases = [Phase("head", self.phase1_epochs, self.lr, {"head": head}),
                  Phase("finetune", self.phase2_epochs, self.lr * self.phase2_lr_factor, {"base": base, "head": head})]
        return [p for p in phases if p.epochs > 0]

    def resolve_weights(self) -> Path | None:
        if self.weights == "none":
            return None
        if self.weights != "imagenet":
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise SystemExit(f"error: --weights {self.weights}: no such file ('imagenet', 'none' or a file)")
            return path
        try:
            return pretrained_file(self.arch)
        except (WeightsUnavailable, ValueError) as e:
            raise SystemExit(f"error: {e}") from None

    def run_name(self) -> str:
        return f"{str(parse_arch(self.arch)).replace(':', '-')}-transfer-{self.data_tag()}"

    def describe(self, model: nn.Module) -> str:
        return f"{model.sportsnet_arch} (weights {self.weights})"

    def image_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return image_stats(self.arch)

    def canonical(self) -> "BackboneConfig":
        try:
            return dataclasses.replace(self, arch=str(parse_arch(self.arch)))  # configs record the library
        except ValueError as e:
            raise SystemExit(f"error: --arch: {e}") from None


# The offline demo: the VGG19 demo's data and budget, from random weights, so backbones compare on equal terms.
DEMO = DEMO_BUDGET


def resolve_config(argv=None) -> tuple[BackboneConfig, dict | None]:
    """Flags -> config; the demo's defaults when there is no dataset; the saved config on --resume."""
    return supervised_config(BackboneConfig, argv, DEMO, __doc__)


def check_config(cfg: BackboneConfig) -> None:
    """One-line errors before any heavy work."""
    if cfg.phase1_epochs + cfg.phase2_epochs == 0:
        raise SystemExit("error: --phase1-epochs and --phase2-epochs are both 0: nothing to train")
    try:  # a dry run: the library builds this model at this size (free on the meta device)
        try:
            with torch.device("meta"):
                cfg.build_model(num_classes=2)
        except NotImplementedError:  # an initialisation that reads values (RegNet's): build it for real
            cfg.build_model(num_classes=2)
    except (ValueError, TypeError, RuntimeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"error: --arch {cfg.arch} at --image-size {cfg.image_size}: {first}") from None


def main(argv=None) -> float:
    return main_of("train", resolve_config, check_config, argv)


if __name__ == "__main__":
    main()
