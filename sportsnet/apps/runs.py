"""A finished classifier run read back: the model of a train_vgg19.py or train.py run folder (or checkpoint),
its config and its class names, for explain.py and the backbone comparison."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..engine import describe_mismatch, load_checkpoint
from .config import checkpoint_path, saved_config
from .supervised import RunConfig
from .train import BackboneConfig
from .train_vgg19 import TrainConfig


def config_class(saved: dict) -> type[RunConfig]:
    """The program's config class of a saved config: train.py's runs record an ``arch``."""
    return BackboneConfig if "arch" in saved else TrainConfig


def load_run(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig, list[str]]:
    """The model of a training run (a run folder -> its best checkpoint, or a checkpoint file), its config
    and class names; weights loaded with weights_only=True, model in eval mode. A missing run or a
    checkpoint that does not fit its config is a one-line exit."""
    ckpt_path = checkpoint_path(path, "best.pt")
    if not ckpt_path.is_file():
        raise SystemExit(f"error: --checkpoint {path}: no such run folder or checkpoint file ({ckpt_path} does not "
                         f"exist)")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    cfg = saved_config(config_class(ckpt["config"]), ckpt["config"])
    classes = list(ckpt["classes"])
    model = cfg.build_model(len(classes))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise SystemExit(f"error: {ckpt_path} does not fit the model its config describes "
                         f"({cfg.describe(model)}, {len(classes)} classes): {describe_mismatch(model, ckpt['model'])}"
                         ) from None
    return model.to(device).eval(), cfg, classes
