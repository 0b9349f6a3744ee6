"""Any torchvision or timm classifier as a backbone: built by its library, with a new head for our classes,
ImageNet weights through each library's own files, and its image statistics.

``arch`` names a model as ``torchvision:resnet50``, ``timm:convnext_atto``, or just ``resnet50``
(torchvision's if it has one by that name, else timm's). The model is the library's own module (its state
dict keys are the library's), with a new ``nn.Linear`` head of ``num_classes`` outputs:

- torchvision: the last ``nn.Linear`` of the model (``fc``, ``classifier.N``, ``head``, ``heads.head``) is
  replaced; its name is :func:`head_name`'s answer;
- timm: ``timm.create_model(num_classes=...)`` (``reset_classifier``'s head), named by the model's
  ``pretrained_cfg["classifier"]``.

Weights (``weights``): ``"none"`` (random, seeded by the caller), ``"imagenet"`` (torchvision: the torch hub
cache's file for the builder's DEFAULT weights, downloaded if missing; timm: the Hugging Face cache's
file of the model's default pretrained tag, downloaded if missing), or a local file of the library's
ImageNet state dict. Files are read with ``weights_only`` loads (torchvision: our
:func:`sportsnet.serialization.load_checkpoint`; timm: its own loader, which also adapts position embeddings
to another image size and drops the ImageNet head). An offline machine without the file gets one line
naming the file to fetch and the flag that takes its path (:mod:`sportsnet.models.download`).

A transformer's input size is fixed when it is built: ``image_size`` is passed as torchvision's
``image_size`` or timm's ``img_size`` to the models that take it.
"""
from __future__ import annotations

import difflib
import logging
import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..serialization import find_mismatch, load_checkpoint
from .download import WeightsUnavailable, check_reachable, fetch_hf_file

log = logging.getLogger(__name__)

LIBRARIES = ("torchvision", "timm")


@dataclass(frozen=True)
class Arch:
    """A parsed ``arch``: the library and the model's name in it."""

    library: str
    name: str

    def __str__(self) -> str:
        return f"{self.library}:{self.name}"


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    import timm

    return sorted(timm.list_models())


def parse_arch(arch: str) -> Arch:
    """``"torchvision:NAME"``, ``"timm:NAME"`` or a bare ``NAME`` (torchvision first) -> :class:`Arch`;
    an unknown name is a ``ValueError`` listing close matches."""
    library, _, name = arch.rpartition(":")
    if library and library not in LIBRARIES:
        raise ValueError(f"arch={arch!r}: the library {library!r} is not one of {', '.join(LIBRARIES)}")
    candidates = {"torchvision": _torchvision_names, "timm": _timm_names}
    for lib in ([library] if library else LIBRARIES):
        if name in candidates[lib]():
            return Arch(lib, name)
    names = {n: f"{lib}:{n}" for lib in reversed([library] if library else LIBRARIES) for n in candidates[lib]()}
    close = [names[n] for n in difflib.get_close_matches(name, list(names), n=5, cutoff=0.6)]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    where = library or "torchvision or timm"
    raise ValueError(f"arch={arch!r} is not a {where} classifier{hint}")


def head_name(model: nn.Module) -> str:
    """The dotted name of ``model``'s classification head (its last ``nn.Linear``)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") if hasattr(model, "pretrained_cfg") else None
    modules = dict(model.named_modules())
    if isinstance(classifier, str) and isinstance(modules.get(classifier), nn.Linear):
        return classifier
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to replace")
    return linears[-1]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def build_classifier(arch: str | Arch, num_classes: int, *, weights: str | os.PathLike = "none",
                     image_size: int | None = None, drop_rate: float = 0.0) -> nn.Module:
    """The library's model of ``arch`` with a new ``num_classes``-way head (see the module docstring).

    ``weights``: ``"none"``, ``"imagenet"`` or a local file; ``image_size``: for transformers whose input size
    is fixed at construction; ``drop_rate``: dropout before the head where the library has it (timm).
    The model records ``sportsnet_arch`` (``"library:name"``).
    """
    spec = arch if isinstance(arch, Arch) else parse_arch(arch)
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if spec.library == "timm":
        model = _build_timm(spec.name, num_classes, weights, image_size, drop_rate)
    else:
        model = _build_torchvision(spec.name, num_classes, weights, image_size)
    model.sportsnet_arch = str(spec)
    return model


#: torchvision's model modules whose classes fix the input size at construction, and the argument that sets it.
TORCHVISION_SIZE_ARGUMENTS = {"torchvision.models.vision_transformer": "image_size", "torchvision.models.maxvit":
                              "input_size"}


def _build_torchvision(name: str, num_classes: int, weights, image_size: int | None) -> nn.Module:
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    kwargs = {}
    argument = TORCHVISION_SIZE_ARGUMENTS.get(builder.__module__)
    if image_size is not None and argument is not None:
        kwargs[argument] = image_size if argument == "image_size" else (image_size, image_size)
    model = builder(weights=None, **kwargs)
    if str(weights) != "none":
        path = torchvision_weights_file(name) if str(weights) == "imagenet" else _local_file(weights)
        state = load_checkpoint(path, what="weights file")
        if not isinstance(state, dict):
            raise ValueError(f"{str(path)!r} is not a state dict of torchvision's {name}")
        mismatch = find_mismatch(model.state_dict(), state, saved="file")
        if mismatch:
            raise ValueError(f"{str(path)!r} does not fit torchvision's {name}: {mismatch.describe(limit=3)}")
        model.load_state_dict(state)
        log.info("%s: ImageNet weights from %s", name, path)
    head = head_name(model)
    _replace(model, head, nn.Linear(model.get_submodule(head).in_features, num_classes))
    return model


def torchvision_weights_file(name: str) -> Path:
    """The torch hub cache's file of torchvision's DEFAULT ImageNet weights for ``name``; downloaded (after one
    reachability check) when missing, else :class:`~sportsnet.models.download.WeightsUnavailable`."""
    import torchvision

    try:
        entry = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"torchvision has no ImageNet weights for {name!r} ({e})") from None
    url = entry.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if path.is_file():
        return path
    what = f"the ImageNet weights of torchvision's {name}"
    manual = (f"Download {url} where there is a network and put it at {path}, or pass its path: --weights "
              f"/path/to/{path.name}")
    check_reachable(url, what=what, manual=manual)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, path)
    try:
        digits = path.stem.rsplit("-", 1)[-1]
        torch.hub.download_url_to_file(url, str(path), hash_prefix=digits if len(digits) >= 8 else None)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise WeightsUnavailable(f"could not download {what} ({e}). {manual}") from e
    return path


def _local_file(weights) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist (--weights takes 'imagenet', 'none' or a "
                                f"file)")
    return path


def _build_timm(name: str, num_classes: int, weights, image_size: int | None, drop_rate: float) -> nn.Module:
    import timm

    kwargs: dict = {"num_classes": num_classes, "drop_rate": drop_rate}
    if str(weights) != "none":
        file = timm_weights_file(name) if str(weights) == "imagenet" else _local_file(weights)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(file)})
    if image_size is not None:
        try:  # transformers fix their input size (and resize loaded position embeddings to it)
            model = timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as e:  # a CNN: any size works, and it takes no img_size
            if "img_size" not in str(e):
                raise
            model = timm.create_model(name, **kwargs)
    else:
        model = timm.create_model(name, **kwargs)
    if kwargs.get("pretrained"):
        log.info("%s: ImageNet weights from %s", name, kwargs["pretrained_cfg_overlay"]["file"])
    return model


def timm_weights_file(name: str) -> Path:
    """The Hugging Face cache's file of timm's default pretrained weights for ``name``; downloaded (after one
    reachability check) when missing, else :class:`~sportsnet.models.download.WeightsUnavailable`."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm has no downloadable ImageNet weights for {name!r}")
    repo = cfg.hf_hub_id
    return Path(fetch_hf_file(repo, ["model.safetensors", "pytorch_model.bin"],
                              what=f"the ImageNet weights of timm's {name}",
                              manual=f"Download model.safetensors from https://huggingface.co/{repo} where there is a "
                                     f"network and pass its path: --weights /path/to/model.safetensors"))


def pretrained_file(arch: str | Arch) -> Path:
    """The local file of ``arch``'s ImageNet weights (the library's cache; downloaded if missing)."""
    spec = arch if isinstance(arch, Arch) else parse_arch(arch)
    return timm_weights_file(spec.name) if spec.library == "timm" else torchvision_weights_file(spec.name)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the new head (trained alone in a transfer recipe's first phase)."""
    return list(model.get_submodule(head_name(model)).parameters())


def image_stats(arch: str | Arch) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the model's ImageNet weights expect: timm's pretrained config; ImageNet's for
    torchvision."""
    from ..data.normalization import IMAGENET_MEAN, IMAGENET_STD

    spec = arch if isinstance(arch, Arch) else parse_arch(arch)
    if spec.library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.name)
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
