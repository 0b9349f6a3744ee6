"""torchvision's ImageNet VGG weights: download through torch's hub cache (hash-checked) or a local file.

Works for a plain :class:`~sportsnet.models.vgg.VGG` (every key) and for models that keep the VGG
conv base as ``features`` with a new head (the seeds' models): the conv base must load completely,
the ImageNet classifier is used only where names and shapes fit. A one-channel first conv (the
grayscale stem) receives the *sum* of the pretrained RGB kernels.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..serialization import find_mismatch, load_checkpoint
from .download import WeightsUnavailable, check_reachable

log = logging.getLogger(__name__)

URLS = {
    "vgg11": "https://download.pytorch.org/models/vgg11-8a719046.pth",
    "vgg13": "https://download.pytorch.org/models/vgg13-19584684.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg11_bn": "https://download.pytorch.org/models/vgg11_bn-6002323d.pth",
    "vgg13_bn": "https://download.pytorch.org/models/vgg13_bn-abd245e5.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.pth$")


@dataclass
class LoadReport:
    """What :func:`load_imagenet_weights` did: the file, keys loaded, and ImageNet keys left unused."""

    path: str
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    summed_rgb_stem: bool = False


def _arch(model: nn.Module) -> str:
    arch = getattr(model, "arch", None)
    if arch not in URLS:
        raise ValueError(
            f"cannot tell which ImageNet weights fit {type(model).__name__} (arch={arch!r}); "
            f"expected a model built by sportsnet.models (arch one of {sorted(URLS)})"
        )
    return arch


def hub_checkpoint_path(arch: str) -> Path:
    """Where torch's hub cache keeps (or will keep) the weights file of ``arch``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URLS[arch])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_hash(path: Path) -> None:
    m = _HASH_IN_NAME.search(path.name)
    if m and not _sha256(path).startswith(m.group(1)):
        raise RuntimeError(
            f"{str(path)!r} is corrupt or incomplete: its SHA-256 does not start with {m.group(1)} as its "
            f"name promises; delete it and download it again"
        )


def resolve_weights_file(model: nn.Module, source: str | os.PathLike) -> Path:
    """``"imagenet"`` -> the hub-cache file (downloaded if missing); anything else is a local path."""
    if str(source) != "imagenet":
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        return path
    arch = _arch(model)
    path = hub_checkpoint_path(arch)
    if not path.is_file():
        what, manual = (f"the ImageNet weights of {arch}",
                        f"Download {URLS[arch]} where there is a network and put it at {path}, or pass its path: "
                        f"--weights /path/to/{path.name}")
        check_reachable(URLS[arch], what=what, manual=manual)
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", URLS[arch], path)
        try:
            # Writes to a temporary file and moves it into place only when the hash matches.
            torch.hub.download_url_to_file(URLS[arch], str(path), hash_prefix=_HASH_IN_NAME.search(path.name).group(1))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise WeightsUnavailable(f"could not download {what} ({e}). {manual}") from e
    return path


def load_imagenet_weights(model: nn.Module, source: str | os.PathLike = "imagenet") -> LoadReport:
    """Load torchvision's ImageNet weights for ``model.arch`` into ``model`` (in place).

    ``source``: ``"imagenet"`` (torch hub cache, downloaded and SHA-256-checked) or a local ``.pth``.
    Files are read with :func:`sportsnet.serialization.load_checkpoint` (``weights_only=True``: a
    pickle it refuses raises :class:`~sportsnet.serialization.UnsafeFileError`). Every ``features.*``
    tensor must fit (``width`` must be 1.0); classifier tensors load only where name and shape match,
    the rest are listed in the returned report's ``unused``.
    """
    path = resolve_weights_file(model, source)
    _check_hash(path)
    state = load_checkpoint(path, what="weights file")
    if not isinstance(state, dict) or not any(isinstance(k, str) and k.startswith("features.") for k in state):
        raise ValueError(f"{str(path)!r} is not a VGG state dict (no 'features.*' keys)")
    report = LoadReport(str(path))
    own = model.state_dict()
    stem = next((k for k in own if k.startswith("features.") and k.endswith(".weight") and own[k].dim() == 4), None)
    if stem is not None and stem in state and own[stem].shape[1] == 1 and state[stem].shape[1] == 3:
        state = dict(state)
        state[stem] = state[stem].sum(dim=1, keepdim=True)  # grayscale stem: gray x sum(w_c) == sum_c(gray x w_c)
        report.summed_rgb_stem = True

    # Old BN files predate num_batches_tracked; BatchNorm fills it in on load.
    mismatch = find_mismatch(own, state, prefix="features.", optional=lambda k: k.endswith("num_batches_tracked"),
                             saved="file")
    if mismatch:
        raise ValueError(
            f"{str(path)!r} does not fit the conv base of this {type(model).__name__}: {mismatch.describe(limit=3)} "
            f"(ImageNet weights need width=1.0 and the matching batch_norm setting)"
        )
    fits = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    report.loaded = sorted(fits)
    report.unused = sorted(map(str, set(state) - set(fits)))
    if report.unused:
        log.info("ImageNet weights: %d tensors not used by this head (%s...)", len(report.unused), report.unused[0])
    return report
