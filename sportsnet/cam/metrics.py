"""Faithfulness of heatmaps, batched and on the maps' device.

Localisation, for data with object boxes ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive):
- :func:`pointing_game`: is the map's maximum inside the box?
- :func:`energy_in_box`: the share of the map's mass inside the box.
- :func:`random_maps` and :func:`center_maps`: the baselines that give these numbers a meaning (random
  smooth maps; a map always peaking at the centre, which objects kept inside the image favour).

Faithfulness to the model (forward passes of the batch, under ``torch.inference_mode``):
- :func:`deletion_insertion`: the target class's probability as pixels are removed (replaced by the
  dataset mean, i.e. 0 after normalisation) or revealed (over a blurred image) in the map's order; the
  area under each curve (lower deletion and higher insertion are better).
- :func:`average_drop_increase`: with the map as a soft mask on the input, Average Drop (%) and
  Increase in Confidence (%).

:func:`score_explanations` computes all of them for a batch of maps of several methods, and
:class:`RunningMeans` averages them over a dataset (what ``explain.py`` reports).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def _check(maps: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {tuple(maps.shape)}")
    if boxes is not None and (boxes.dim() != 2 or boxes.shape != (maps.shape[0], 4)):
        raise ValueError(f"boxes must be (B, 4) = (x0, y0, x1, y1) for {maps.shape[0]} maps, got {tuple(boxes.shape)}")
    return maps


def _box_mask(boxes: torch.Tensor, H: int, W: int, device) -> torch.Tensor:
    ys = torch.arange(H, device=device)[None, :, None]
    xs = torch.arange(W, device=device)[None, None, :]
    b = boxes.to(device)[:, :, None, None]
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])  # (B, H, W)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """``(B,)`` bool: the map's maximum lies within ``tolerance`` pixels of the box. An all-zero map
    points nowhere (a miss)."""
    maps = _check(maps, boxes)
    B, H, W = maps.shape
    flat = maps.reshape(B, -1)
    peak, idx = flat.max(dim=1)
    y, x = idx // W, idx % W
    b = boxes.to(maps.device)
    inside = ((x >= b[:, 0] - tolerance) & (x < b[:, 2] + tolerance)
              & (y >= b[:, 1] - tolerance) & (y < b[:, 3] + tolerance))
    return inside & (peak > 0)


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of each map's sum that lies inside its box (0 for an all-zero map)."""
    maps = _check(maps, boxes).float()
    B, H, W = maps.shape
    inside = (maps * _box_mask(boxes, H, W, maps.device)).sum(dim=(1, 2))
    total = maps.sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def random_maps(shape: tuple[int, int, int], grid: int = 7, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """``(B, H, W)`` smooth random maps in [0, 1]: uniform noise on a ``grid x grid`` lattice, resized
    bilinearly (as coarse as a Grad-CAM map of a 7x7 layer)."""
    B, H, W = shape
    noise = torch.rand(B, 1, grid, grid, generator=generator)
    maps = F.interpolate(noise, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - lo) / (hi - lo + 1e-7)).to(device)


def center_maps(shape: tuple[int, int, int], device=None) -> torch.Tensor:
    """``(B, H, W)`` maps peaking at the image centre: the baseline of a "centre prior". When objects
    must lie inside the image they cluster around its centre, so this baseline is far stronger than
    random maps, and a heatmap method should beat it."""
    B, H, W = shape
    ys = torch.arange(H, dtype=torch.float32, device=device)[:, None] - (H - 1) / 2
    xs = torch.arange(W, dtype=torch.float32, device=device)[None, :] - (W - 1) / 2
    dist = (ys / H) ** 2 + (xs / W) ** 2
    return (1 - dist / dist.max()).expand(B, H, W)


@torch.inference_mode()
def _probs(model: Callable, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return model(images).float().softmax(dim=1).gather(1, classes[:, None])[:, 0]


def deletion_insertion(model: Callable, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                       steps: int = 16, blur_sigma: float = 5.0) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves and their areas (trapezoid rule over the fraction of pixels).

    ``images`` are model inputs (normalised), ``maps`` ``(B, H, W)`` at the images' size, ``classes``
    ``(B,)``. Returns ``{"deletion": (B,), "insertion": (B,), "deletion_curve": (B, steps + 1),
    "insertion_curve": (B, steps + 1)}``. Costs ``2 * (steps + 1)`` forward passes of the batch.
    """
    maps = _check(maps)
    if maps.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"maps {tuple(maps.shape)} must have the images' size {tuple(images.shape[-2:])}")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    B, H, W = maps.shape
    classes = classes.to(images.device).long()
    order = maps.reshape(B, -1).argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(H * W, device=order.device).expand(B, -1))
    rank = rank.reshape(B, 1, H, W).to(images.device)
    k = min(max(1, 2 * round(3 * blur_sigma) + 1), 2 * min(H, W) - 1)  # reflect padding needs k < 2 * side
    blurred = TF.gaussian_blur(images, kernel_size=[k, k], sigma=[blur_sigma, blur_sigma])
    removed = torch.zeros_like(images)  # the dataset mean, after normalisation
    deletion, insertion = [], []
    for s in range(steps + 1):
        first = rank < round(s / steps * H * W)  # the most salient pixels so far
        deletion.append(_probs(model, torch.where(first, removed, images), classes))
        insertion.append(_probs(model, torch.where(first, images, blurred), classes))
    curves = {"deletion_curve": torch.stack(deletion, 1), "insertion_curve": torch.stack(insertion, 1)}
    auc = lambda c: ((c[:, 1:] + c[:, :-1]) / 2).mean(dim=1)  # noqa: E731  (x spacing 1/steps)
    return {"deletion": auc(curves["deletion_curve"]), "insertion": auc(curves["insertion_curve"]), **curves}


def average_drop_increase(model: Callable, images: torch.Tensor, maps: torch.Tensor,
                          classes: torch.Tensor) -> dict[str, float]:
    """Average Drop % (mean of max(0, y - o) / y) and Increase in Confidence % (share with o > y),
    where y is the class probability on the image and o on the image multiplied by its map."""
    maps = _check(maps)
    classes = classes.to(images.device).long()
    y = _probs(model, images, classes)
    o = _probs(model, images * maps[:, None].to(images.dtype), classes)
    drop = ((y - o).clamp_min(0) / y.clamp_min(1e-12)).mean()
    return {"average_drop": 100 * drop.item(), "increase_in_confidence": 100 * (o > y).float().mean().item()}


def score_explanations(model: Callable, images: torch.Tensor, maps: dict[str, torch.Tensor], classes: torch.Tensor,
                       boxes: torch.Tensor | None = None, *, tolerance: int = 0, deletion_steps: int = 16,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Every metric of this module for one batch, per image: ``{"<metric>/<name>": (B,) values}``.

    ``maps`` holds one ``(B, H, W)`` map per method name (the images' size); ``classes`` ``(B,)`` is the
    class each map explains. With ``boxes``, the localisation metrics (pointing game with ``tolerance``
    and strict, energy in box) of every method and of the random and centre baselines; always Average
    Drop / Increase in Confidence (one value per batch, repeated per image) and, unless
    ``deletion_steps`` is 0, the deletion/insertion AUCs. Average them over a dataset with
    :class:`RunningMeans`.
    """
    out: dict[str, torch.Tensor] = {}
    b = images.shape[0]
    if boxes is not None:
        shape = (b, images.shape[-2], images.shape[-1])
        baselines = {"random": random_maps(shape, generator=generator, device=images.device),
                     "center": center_maps(shape, device=images.device)}
        for name, m in {**maps, **baselines}.items():
            out[f"pointing_game/{name}"] = pointing_game(m, boxes, tolerance)
            out[f"pointing_game_strict/{name}"] = pointing_game(m, boxes)
            out[f"energy_in_box/{name}"] = energy_in_box(m, boxes)
    for name, m in maps.items():
        if deletion_steps > 0:
            di = deletion_insertion(model, images, m, classes, steps=deletion_steps)
            out[f"deletion_auc/{name}"] = di["deletion"]
            out[f"insertion_auc/{name}"] = di["insertion"]
        ad = average_drop_increase(model, images, m, classes)
        out[f"average_drop/{name}"] = torch.full((b,), ad["average_drop"])
        out[f"increase_in_confidence/{name}"] = torch.full((b,), ad["increase_in_confidence"])
    return out


class RunningMeans:
    """Means of named per-image values over many batches (a dataset's metrics)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, values: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(values.float().sum())
        self.counts[key] = self.counts.get(key, 0) + values.numel()

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for key, v in values.items():
            self.add(key, v)

    def means(self) -> dict[str, float]:
        """Each key's mean, keys sorted."""
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}
