"""The default target layer of each model family: the layer a CAM explains when none is named.

Families are recognised by class name and the library that defines the class, anywhere in the model (the
outermost match wins, so a classifier that wraps a torchvision or timm network gets that network's layer,
prefixed). The choices, with pytorch-grad-cam's recommendations (its README's table) where it has one:

- our VGG19 and torchvision's VGG/AlexNet: the last ReLU of ``features`` (pytorch-grad-cam: ``features[-1]``,
  the max pool after it; the ReLU has the same channels at twice the resolution);
- torchvision ResNet/ResNeXt/Wide ResNet and open_clip's ModifiedResNet: ``layer4`` (the last block's output,
  pytorch-grad-cam's ``layer4[-1]``);
- torchvision DenseNet, MobileNetV2/V3, EfficientNet(V2), ConvNeXt, Swin, SqueezeNet: ``features``, the last
  feature map (``features[-1]``'s output; DenseNet: ``norm5``, see docs/explanations.md for the ReLU after it;
  Swin: channels-last, resolved by :mod:`sportsnet.cam.layouts`); MaxViT: the last of ``blocks``; RegNet:
  ``trunk_output``; MNASNet: ``layers``; ShuffleNetV2: ``conv5``; GoogLeNet: ``inception5b``; Inception v3:
  ``Mixed_7c``;
- ViTs (torchvision, timm ViT/DeiT/EVA and any timm model with prefix tokens and ``blocks``, open_clip's
  towers): the last block's first norm (``ln_1``, ``norm1``). Its output is every token's input to the last
  attention; the last block's *output* reaches a class-token head through the class token alone, so its patch
  tokens get no gradient and Grad-CAM a blank map (pytorch-grad-cam recommends the same layer);
- other timm models: the module of the last entry of their ``feature_info`` (the final feature map: ``layer4``,
  ``stages.3``, ``layers.3``, ``bn2``...).
"""
from __future__ import annotations

from torch import nn

#: torchvision classes -> the dotted name of their target layer inside the class (``[-1]``: the last child
#: of a ModuleList, which forward iterates without calling).
TORCHVISION = {
    "ResNet": "layer4", "DenseNet": "features", "MobileNetV2": "features", "MobileNetV3": "features",
    "EfficientNet": "features", "ConvNeXt": "features", "SwinTransformer": "features", "SqueezeNet": "features",
    "MaxVit": "blocks[-1]", "RegNet": "trunk_output", "MNASNet": "layers", "ShuffleNetV2": "conv5",
    "GoogLeNet": "inception5b", "Inception3": "Mixed_7c",
}


def _last_child(module: nn.Module) -> str:
    return list(module.named_children())[-1][0]


def _vgg_style(m: nn.Module) -> str | None:
    features = getattr(m, "features", None)
    if isinstance(features, nn.Sequential):
        relus = [i for i, layer in enumerate(features) if isinstance(layer, nn.ReLU)]
        if relus:
            return f"features.{relus[-1]}"
    return None


def family_layer(m: nn.Module) -> str | None:
    """The target layer inside ``m`` (relative to it) if ``m``'s class is a family we know, else None."""
    kind, library = type(m).__name__, type(m).__module__.split(".")[0]
    if library == "open_clip":
        if kind == "ModifiedResNet":
            return "layer4"
        if kind == "VisionTransformer" and hasattr(m, "transformer"):
            return f"transformer.resblocks.{len(m.transformer.resblocks) - 1}.ln_1"
        return None
    if library == "torchvision":
        if kind == "VisionTransformer":
            return f"encoder.layers.{_last_child(m.encoder.layers)}.ln_1"
        if kind in ("VGG", "AlexNet"):
            return _vgg_style(m)
        layer = TORCHVISION.get(kind)
        if layer is not None and layer.endswith("[-1]"):
            parent = layer[:-4]
            return f"{parent}.{_last_child(m.get_submodule(parent))}"
        return layer
    if library == "timm":
        blocks = getattr(m, "blocks", None)
        if isinstance(getattr(m, "num_prefix_tokens", None), int) and isinstance(blocks, (nn.Sequential,
                                                                                          nn.ModuleList)):
            if len(blocks) and hasattr(blocks[-1], "norm1"):
                return f"blocks.{len(blocks) - 1}.norm1"
        info = getattr(m, "feature_info", None)
        if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("module"):
            return info[-1]["module"]
        return None
    if kind in ("SportsVGG", "VGG"):  # ours (sportsnet.models)
        return _vgg_style(m)
    return None


def default_target_layer(model: nn.Module) -> str:
    """The usual CAM layer of ``model``'s family (see the module docstring), as a dotted name."""
    modules = dict(model.named_modules())
    for name, m in model.named_modules():
        inner = family_layer(m)
        if inner is not None:
            full = f"{name}.{inner}" if name else inner
            if full in modules:
                return full
    vgg = _vgg_style(model)  # any model with a VGG-style conv base
    if vgg is not None:
        return vgg
    raise ValueError(
        f"no default target layer for {type(model).__name__}; pass target_layer= (a module or a dotted name such "
        f"as 'layer4' or 'features.35'); docs/explanations.md lists the families with defaults")
