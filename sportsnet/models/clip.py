"""Loading open_clip models: any architecture, weights from a tag (downloaded into open_clip's cache)
or a local checkpoint, the tokenizer, and the image preprocessing that belongs to the model.

OpenAI's weights were trained with QuickGELU: asked for ``ViT-B-32`` with ``pretrained="openai"``, we
load ``ViT-B-32-quickgelu`` (or force QuickGELU) instead of silently losing accuracy.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from ..data.transforms import build_transforms
from ..serialization import WeightsFileError, describe_mismatch, load_checkpoint
from .download import WeightsUnavailable, check_reachable, fetch_hf_file

log = logging.getLogger(__name__)
NO_WEIGHTS = ("none", "", None)


@dataclass
class ClipBundle:
    """A loaded CLIP model with what belongs to it."""

    model: nn.Module  # open_clip CLIP: encode_image / encode_text, visual, logit_scale
    tokenizer: Any
    name: str  # the architecture actually built (e.g. with -quickgelu)
    pretrained: str  # tag, file path, or "none"
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode

    def transforms(self, train: bool = False, **kwargs):
        """Our v2 pipeline with the model's size, statistics and (bicubic) resize; eval resizes the
        shorter side to the input size and centre-crops, as CLIP's own preprocessing does."""
        return build_transforms(train, self.image_size, mean=self.mean, std=self.std,
                                interpolation=self.interpolation, resize_ratio=1.0, **kwargs)


# Our own architectures (JSON in open_clip's format), registered with open_clip on first use:
# sportsnet-demo-rn is the small ResNet CLIP of zero_shot_clip.py's offline demo; sportsnet-demo-vit a small ViT CLIP
# trained by the same recipe, the transformer of the trust tables (benchmarks/trust.py).
CONFIGS = Path(__file__).with_name("clip_configs")
DEMO_ARCH = "sportsnet-demo-rn"


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("open_clip is required for CLIP models: pip install 'open-clip-torch>=3.2,<4'") from e
    if DEMO_ARCH not in open_clip.list_models():
        open_clip.add_model_config(CONFIGS)
    return open_clip


def _resolve_name(open_clip, name: str, tag_cfg: dict | None) -> tuple[str, bool]:
    """Pick the QuickGELU variant a tag was trained with: ``(model name, force_quick_gelu)``."""
    if not tag_cfg or not tag_cfg.get("quick_gelu") or name.endswith("-quickgelu"):
        return name, False
    variant = f"{name}-quickgelu"
    if variant in open_clip.list_models():
        log.info("%s weights were trained with QuickGELU: building %s", name, variant)
        return variant, False
    log.warning("%s weights were trained with QuickGELU and there is no %s config: forcing QuickGELU", name, variant)
    return name, True


def weights_url(tag_cfg: dict) -> str:
    """Where a tag's weights can be fetched by hand, as a plain state dict (the Hugging Face copy; the
    original OpenAI files are TorchScript archives, which a weights-only loader rightly refuses)."""
    if tag_cfg.get("hf_hub"):
        return f"https://huggingface.co/{tag_cfg['hf_hub'].rstrip('/')}/resolve/main/open_clip_pytorch_model.bin"
    return tag_cfg.get("url", "(no download location known)")


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state dict, metadata)`` from a local file: safetensors, or a torch file read by
    :func:`sportsnet.serialization.load_checkpoint` (``weights_only=True``). The state dict may be
    plain or under ``"state_dict"`` / ``"model"``, whose plain sibling entries (``"arch"``...) are the
    metadata; ``module.`` prefixes (DistributedDataParallel's) are dropped."""
    path = Path(path)
    meta: dict = {}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors' own error type: a damaged file or another format
            raise WeightsFileError(f"weights file {str(path)!r} is not a readable safetensors file "
                                   f"({type(e).__name__}: {e})") from e
    else:
        state = load_checkpoint(path, what="weights file")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            meta = {k: v for k, v in state.items() if isinstance(v, (str, int, float, bool))}
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors (str keys to tensors, plain or "
                         f"under 'state_dict' or 'model')")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}, meta


def _manual(tag_cfg: dict) -> str:
    return (f"Download {weights_url(tag_cfg)} where there is a network and pass its path: --pretrained "
            f"/path/to/that/file (pretrained='/path' in code)")


def _what(arch: str, tag: str) -> str:
    return f"the {arch} weights {tag!r}"


def _fetch_tag(tag_cfg: dict, arch: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """A tag's weights as ``(what to pass open_clip as pretrained, its preprocessing)``: a Hugging Face
    file from the cache or downloaded once (open_clip's own download retries an unreachable host for
    a minute), or, for tags known only by URL, the tag itself once its host answers."""
    hf = tag_cfg.get("hf_hub", "")
    if not hf:
        url = tag_cfg.get("url", "")
        cached = Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url)
        if url and not cached.is_file():
            check_reachable(url, what=_what(arch, tag), manual=_manual(tag_cfg))
        return tag, {}
    repo_id, filename = os.path.split(hf)  # "org/name/" -> the default file name, as open_clip reads it
    filename = filename or "open_clip_pytorch_model.bin"
    # open_clip prefers a safetensors copy when the repo has one
    safe = ("open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin"
            else filename[:-4] + ".safetensors" if filename.endswith((".bin", ".pth")) else None)
    path = fetch_hf_file(repo_id, [n for n in (safe, filename) if n], cache_dir=cache_dir,
                         what=_what(arch, tag), manual=_manual(tag_cfg))
    # Passed as a file, the tag's preprocessing must be passed too (open_clip takes it from the tag).
    kwargs = {"image_mean": tag_cfg.get("mean"), "image_std": tag_cfg.get("std"),
              "image_interpolation": tag_cfg.get("interpolation"), "image_resize_mode": tag_cfg.get("resize_mode")}
    return path, {k: v for k, v in kwargs.items() if v is not None}


def load_clip(name: str, pretrained: str | None = "openai", device: str | torch.device = "cpu",
              cache_dir: str | None = None) -> ClipBundle:
    """Build an open_clip model with its weights, tokenizer and preprocessing settings.

    Args:
        name: an open_clip architecture (``open_clip.list_models()``), e.g. ``"ViT-B-32"``, ``"RN50"``.
        pretrained: a tag (``open_clip.list_pretrained_tags_by_model(name)``, downloaded into open_clip's
            cache), a local checkpoint file, or ``"none"`` for random weights.
        cache_dir: where open_clip caches downloads (its default otherwise).
    """
    open_clip = _open_clip()
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        raise ValueError(f"unknown open_clip model {name!r}; e.g. {close or open_clip.list_models()[:8]}")
    tag = None if pretrained in NO_WEIGHTS else str(pretrained)
    local = tag is not None and (os.path.sep in tag or tag.endswith((".pt", ".pth", ".bin", ".safetensors")))
    if local and not Path(tag).is_file():
        raise FileNotFoundError(f"pretrained checkpoint {tag!r} does not exist")
    tag_cfg = None
    if tag is not None and not local:
        tag_cfg = open_clip.get_pretrained_cfg(name, tag) or open_clip.get_pretrained_cfg(f"{name}-quickgelu", tag)
        if not tag_cfg:
            raise ValueError(f"{tag!r} is neither a pretrained tag of {name} "
                             f"({open_clip.list_pretrained_tags_by_model(name)}) nor an existing file")
    arch, force_quick_gelu = _resolve_name(open_clip, name, tag_cfg)
    if local:
        state, meta = read_weights_file(tag)
        saved = meta.get("arch")
        if saved and saved != arch:  # e.g. written by experiments/pretrain_clip.py
            raise ValueError(f"{tag!r} holds {saved} weights, not {arch}: pass --model {saved}")
        if not saved and not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in open_clip.list_models():
            log.warning("%s: a weights file does not say which activation it was trained with; if these are "
                        "OpenAI (QuickGELU) weights, use %s-quickgelu or they lose accuracy", tag, arch)
    # With a local file the weights are loaded below, and with "none" random weights are what was asked
    # for: either way open_clip's "initialized randomly" warning would mislead.
    quiet = (lambda record: "initialized randomly" not in record.getMessage()) if local or tag is None else None
    tag_source, preprocess_kwargs = (_fetch_tag(tag_cfg, arch, tag, cache_dir) if tag_cfg else (None, {}))
    root_logger = logging.getLogger()
    if quiet:
        root_logger.addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=None if local else tag_source, device=device, cache_dir=cache_dir,
            force_quick_gelu=force_quick_gelu, **preprocess_kwargs)
    except RuntimeError as e:
        if tag_cfg is None:
            raise
        raise WeightsUnavailable(f"could not load {_what(arch, tag)} ({str(e).splitlines()[0][:200]}). "
                                 f"{_manual(tag_cfg)}") from e
    finally:
        if quiet:
            root_logger.removeFilter(quiet)
    if local:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError:
            raise ValueError(f"{tag!r} does not fit {arch}: {describe_mismatch(model, state)}") from None
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = getattr(model.visual, "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}.get(
        cfg.get("interpolation", "bicubic"), InterpolationMode.BICUBIC)
    mean = tuple(cfg.get("mean", getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(cfg.get("std", getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)))
    return ClipBundle(model.eval(), open_clip.get_tokenizer(arch), arch, tag or "none", size, mean, std, interp)


