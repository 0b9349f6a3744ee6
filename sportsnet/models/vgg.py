"""VGG, written out: cfg lists + ``make_layers``.

Module names and order are torchvision's (``features.N``, ``classifier.{0,3,6}``): they are the
state-dict contract, so torchvision's ImageNet weights load with ``strict=True``. ``width`` scales
every conv and the classifier's hidden width, for tiny CPU models; 1.0 is the real network.
"""
from __future__ import annotations

import torch
from torch import nn

# Numbers are conv output widths (3x3, padding 1); "M" is a 2x2 max pool.
CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def scaled(channels: int, width: float) -> int:
    """A layer width scaled by ``width``, at least 1."""
    return max(1, int(round(channels * width)))


def make_layers(cfg: list[int | str], batch_norm: bool = False, width: float = 1.0,
                in_channels: int = 3) -> nn.Sequential:
    """Conv(3x3) [+ BatchNorm] + ReLU per number in ``cfg``, MaxPool(2) per ``"M"``."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        c_out = scaled(int(v), width)
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
        c_in = c_out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` (conv base) -> ``avgpool`` (7x7) -> ``classifier`` (3 Linear layers).

    ``forward_features`` gives the conv map ``(B, 512*width, H/32, W/32)``; ``forward_head`` maps it
    to logits. ``arch`` names the ImageNet weights that fit (e.g. ``"vgg19"``, ``"vgg19_bn"``).
    """

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5,
                 width: float = 1.0, arch: str = "vgg", init_weights: bool = True):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.arch, self.width = arch, width
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        c, hidden = scaled(512, width), scaled(4096, width)
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        if init_weights:
            init_vgg_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def init_vgg_(module: nn.Module) -> None:
    """torchvision's VGG initialisation (Kaiming for convs, N(0, 0.01) for linears)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _vgg(name: str, num_classes: int, batch_norm: bool, width: float, dropout: float) -> VGG:
    if not width > 0:
        raise ValueError(f"width={width} must be > 0 (1.0 is the real {name})")
    features = make_layers(CFGS[name], batch_norm=batch_norm, width=width)
    return VGG(features, num_classes, dropout, width, arch=name + ("_bn" if batch_norm else ""))


def vgg11(num_classes: int = 1000, *, batch_norm: bool = False, width: float = 1.0, dropout: float = 0.5) -> VGG:
    return _vgg("vgg11", num_classes, batch_norm, width, dropout)


def vgg13(num_classes: int = 1000, *, batch_norm: bool = False, width: float = 1.0, dropout: float = 0.5) -> VGG:
    return _vgg("vgg13", num_classes, batch_norm, width, dropout)


def vgg16(num_classes: int = 1000, *, batch_norm: bool = False, width: float = 1.0, dropout: float = 0.5) -> VGG:
    return _vgg("vgg16", num_classes, batch_norm, width, dropout)


def vgg19(num_classes: int = 1000, *, batch_norm: bool = False, width: float = 1.0, dropout: float = 0.5) -> VGG:
    """VGG19 (configuration "E"): 16 convs + 3 linears; 143,667,240 parameters at width 1."""
    return _vgg("vgg19", num_classes, batch_norm, width, dropout)
