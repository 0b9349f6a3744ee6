"""Zero-shot classification with CLIP: a text classifier built once, and an image -> logits module.

``build_text_classifier`` embeds every (class name, template) prompt in batches, normalises each
embedding, averages a class's templates and normalises again (CLIP's recipe), giving ``(D, C)``. It is
cached per model, so building it twice costs nothing. ``ZeroShotClassifier`` is an ``nn.Module`` from
images to logits, so ``sportsnet.engine.evaluate`` and ``sportsnet.cam.GradCAM`` work on it unchanged.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def build_text_classifier(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                          batch_size: int = 256, device: str | torch.device | None = None) -> torch.Tensor:
    """``(D, C)`` unit-norm class embeddings: for each class, the mean of its normalised template
    embeddings, normalised. ``templates`` are format strings with one ``{}``. Cached per model."""
    if not classnames:
        raise ValueError("classnames is empty")
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"templates must be format strings with exactly one '{{}}', got {list(templates)[:3]}")
    key = (tuple(classnames), tuple(templates))
    cached = _CACHE.setdefault(model, {})
    if key in cached:
        return cached[key]
    device = device or next(model.parameters()).device
    prompts = [t.format(c) for c in classnames for t in templates]  # class-major
    chunks = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[i:i + batch_size]).to(device)
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    emb = torch.cat(chunks).view(len(classnames), len(templates), -1).mean(dim=1)  # (C, D)
    weights = F.normalize(emb, dim=-1).T.contiguous()  # (D, C)
    cached[key] = weights
    return weights


class ZeroShotClassifier(nn.Module):
    """Images -> ``logit_scale * normalize(image features) @ text_classifier``.

    Holds the CLIP image tower (``visual``, so Grad-CAM's default layers apply) and the ``(D, C)``
    text classifier as a buffer. ``logit_scale`` defaults to the model's learned one.
    """

    def __init__(self, clip_model: nn.Module, text_classifier: torch.Tensor, logit_scale: float | None = None,
                 classes: Sequence[str] | None = None):
        super().__init__()
        if text_classifier.dim() != 2:
            raise ValueError(f"text_classifier must be (D, C), got shape {tuple(text_classifier.shape)}")
        self.visual = clip_model.visual
        dim = getattr(self.visual, "output_dim", text_classifier.shape[0])
        if text_classifier.shape[0] != dim:
            raise ValueError(f"text_classifier has {text_classifier.shape[0]} rows but the image features have {dim}")
        self.register_buffer("text_classifier", text_classifier.float())
        scale = logit_scale if logit_scale is not None else float(clip_model.logit_scale.detach().exp())
        self.logit_scale = float(scale)
        self.classes = list(classes) if classes is not None else None

    @classmethod
    def from_names(cls, bundle, classnames: Sequence[str], templates: Sequence[str],
                   labels: Sequence[str] | None = None, **kwargs) -> "ZeroShotClassifier":
        """From a :class:`~sportsnet.models.clip.ClipBundle`: prompts use ``classnames`` (cleaned), the
        classifier's ``classes`` keep ``labels`` (the dataset's spelling) when given."""
        weights = build_text_classifier(bundle.model, bundle.tokenizer, classnames, templates, **kwargs)
        return cls(bundle.model, weights, classes=labels if labels is not None else classnames)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` unit-norm image features."""
        return F.normalize(self.visual(images), dim=-1)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` logits from the image tower's ``(B, D)`` output (not yet normalised): what
        :meth:`forward` does after the tower, so explainers can read a class score from any layer."""
        feats = F.normalize(features, dim=-1)
        return self.logit_scale * feats @ self.text_classifier.to(feats.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.visual(images))
