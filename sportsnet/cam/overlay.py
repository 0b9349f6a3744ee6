"""Heatmap overlays (on the tensors' device) and labelled PNG grids."""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ..plotting import save_figure


@functools.lru_cache(maxsize=16)
def _lut(colormap: str) -> torch.Tensor:
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; any matplotlib colormap name works, e.g. 'jet', "
                         f"'turbo', 'inferno'") from None
    return torch.from_numpy(cmap(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32))  # (256, 3)


def colorize(maps: torch.Tensor, colormap: str = "jet") -> torch.Tensor:
    """``(B, H, W)`` values in [0, 1] -> ``(B, 3, H, W)`` colours from a matplotlib colormap (a 256-entry
    lookup table), on the maps' device."""
    lut = _lut(colormap).to(maps.device)
    index = (maps.float().clamp(0, 1) * 255).round().long()
    return lut[index].permute(0, 3, 1, 2)


def overlay(images: torch.Tensor, maps: torch.Tensor, colormap: str = "jet", alpha: float = 0.5) -> torch.Tensor:
    """Blend heatmaps over images: ``(1 - alpha) * image + alpha * colour(map)``.

    Args:
        images: ``(B, 3, H, W)`` (or one-channel) values in [0, 1] (denormalise first).
        maps: ``(B, H, W)`` or ``(B, 1, H, W)`` in [0, 1]; resized bilinearly when their size differs.
    Returns ``(B, 3, H, W)`` float32 in [0, 1] on the images' device.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not match images of shape {tuple(images.shape)}")
    maps = maps.to(images.device)
    if maps.shape[-2:] != images.shape[-2:]:
        maps = F.interpolate(maps[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    images = images.float().expand(-1, 3, -1, -1)
    return ((1 - alpha) * images + alpha * colorize(maps, colormap)).clamp(0, 1)


def grid_figure(images: torch.Tensor, maps: torch.Tensor | None = None, *, true_names: Sequence[str] | None = None,
                pred_names: Sequence[str] | None = None, scores: Sequence[float] | None = None, ncol: int = 8,
                colormap: str = "jet", alpha: float = 0.5, title: str | None = None) -> Figure:
    """A grid of (overlaid) images with "true / pred (score)" under each; correct ones green, wrong red."""
    pics = overlay(images, maps, colormap, alpha) if maps is not None else images.float().expand(-1, 3, -1, -1)
    pics = pics.detach().cpu().permute(0, 2, 3, 1).numpy()
    n = len(pics)
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(1.9 * ncol, 2.35 * nrow + (0.4 if title else 0)), dpi=100)
    for i in range(nrow * ncol):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(pics[i], interpolation="bilinear")
        lines, colour = [], "black"
        if pred_names is not None:
            score = f" ({scores[i]:.2f})" if scores is not None else ""
            lines.append(f"pred: {pred_names[i]}{score}")
        if true_names is not None:
            lines.insert(0, f"true: {true_names[i]}")
            if pred_names is not None:
                colour = "#1e8449" if true_names[i] == pred_names[i] else "#c0392b"
        if lines:
            ax.set_title("\n".join(lines), fontsize=7, color=colour, y=-0.02, va="top")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_grid(path: str | os.PathLike, images: torch.Tensor, maps: torch.Tensor | None = None, **kwargs) -> Path:
    """Write :func:`grid_figure` as a PNG; returns the path."""
    return save_figure(grid_figure(images, maps, **kwargs), path)
