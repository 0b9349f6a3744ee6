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
- :func:`road` and :func:`road_combined`: ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation
  Strategy for Attribution Methods"): the change of the class's probability when the most (or least)
  relevant pixels are replaced by :func:`noisy_linear_imputation`, which leaks far less of the removed
  shape to the model than a constant or a blur. Defined as pytorch-grad-cam's ROAD metrics, and tested
  against them.

:func:`score_explanations` computes all of them for a batch of maps of several methods, and
:class:`RunningMeans` averages them over a dataset (what ``explain.py`` reports).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

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
                       generator: torch.Generator | None = None, road: bool = False,
                       road_percentiles: Sequence[float] = (20, 40, 60, 80),
                       road_noise: float = 0.01) -> dict[str, torch.Tensor]:
    """Every metric of this module for one batch, per image: ``{"<metric>/<name>": (B,) values}``.

    ``maps`` holds one ``(B, H, W)`` map per method name (the images' size); ``classes`` ``(B,)`` is the
    class each map explains. With ``boxes``, the localisation metrics (pointing game with ``tolerance``
    and strict, energy in box) of every method and of the random and centre baselines; always Average
    Drop / Increase in Confidence (one value per batch, repeated per image) and, unless
    ``deletion_steps`` is 0, the deletion/insertion AUCs. Average them over a dataset with
    :class:`RunningMeans`.

    With ``road=True`` (off by default: its imputations cost one iterative sparse solve per image,
    percentile and order, far more than the other metrics on a CPU) also ``road_most/<name>`` and
    ``road_least/<name>`` (the mean over ``road_percentiles`` of :func:`road`'s probability changes) and
    ``road_combined/<name>`` (:func:`road_combined`), all from one batched pass; ``generator`` seeds the
    imputation noise.
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
        if road:
            most, least = _road_changes(model, images, m, classes, road_percentiles, ("most", "least"),
                                        noise=road_noise, batch_size=64, generator=generator).mean(dim=2)
            out[f"road_most/{name}"], out[f"road_least/{name}"] = most, least
            out[f"road_combined/{name}"] = (least - most) / 2
    return out


# --- ROAD --------------------------------------------------------------------------------------------------------


def _stencil(x: torch.Tensor) -> torch.Tensor:
    """The separable [1 2 1] x [1 2 1] stencil, pixels outside the image counting as 0: 12 times the
    weighted sum of the 8 neighbours (weight 1/6 for the 4 direct ones, 1/12 for the diagonal ones) plus
    4 times the pixel. Elementwise sums: exact float32 on every device (a convolution may run in TF32)."""
    p = F.pad(x, (1, 1, 1, 1))
    v = torch.add(p[..., :-2, :] + p[..., 2:, :], p[..., 1:-1, :], alpha=2)  # (..., H, W + 2)
    return torch.add(v[..., :-2] + v[..., 2:], v[..., 1:-1], alpha=2)


def _impute(images: torch.Tensor, removed: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """The noiseless imputation of :func:`noisy_linear_imputation`: ``images`` ``(N, C, H, W)`` float32/64,
    ``removed`` ``(N, H, W)`` bool. Conjugate gradients, batched over every (image, channel) system."""
    H, W = images.shape[-2:]
    R = removed[:, None].to(images.dtype)
    # Row i of the system (i removed): D_i x_i - sum_{removed j ~ i} w_ij x_j = sum_{kept j ~ i} w_ij v_j,
    # D_i the sum of the weights of i's neighbours inside the image. Symmetric, and positive definite
    # when any pixel is kept (8-connected, every removed region then touches a kept pixel). With the
    # stencil, D_i = (S1_i - 4) / 12 for S1 = stencil(1), so (A p)_i = (S1_i p_i - stencil(p)_i) / 12.
    S1 = _stencil(torch.ones(1, 1, H, W, dtype=images.dtype, device=images.device))
    scale = R / -12

    def A(p: torch.Tensor) -> torch.Tensor:  # p is 0 on kept pixels
        return torch.addcmul(_stencil(p), S1, p, value=-1).mul_(scale)

    b = _stencil(images * (1 - R)).mul_(R / 12)  # the 4 v_i term is 0 on kept pixels
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    dot = lambda u, v: (u * v).sum(dim=(2, 3), keepdim=True)  # noqa: E731  (one value per system)
    rr = dot(r, r)
    stop = rr * rtol ** 2
    tiny = torch.finfo(images.dtype).tiny
    max_iter = 20 * (H + W) + 100  # typically ~ H + W (smooth maps, 80% removed)
    for it in range(max_iter + 1):
        if it % 8 == 0 and bool((rr <= stop).all()):
            break
        if it == max_iter:
            worst = (rr / stop.clamp_min(tiny)).max().sqrt().item() * rtol
            warnings.warn(f"noisy_linear_imputation: conjugate gradients stopped after {max_iter} iterations "
                          f"at a relative residual of {worst:.2e} (target {rtol:g})", stacklevel=3)
            break
        Ap = A(p)
        alpha = rr / dot(p, Ap).clamp_min(tiny)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, Ap, value=-1)
        rr_next = dot(r, r)
        p.mul_(rr_next / rr.clamp_min(tiny)).add_(r)
        rr = rr_next
    return torch.where(removed[:, None], x, images)


def _with_noise(imputed: torch.Tensor, removed: torch.Tensor, noise: float,
                generator: torch.Generator | None) -> torch.Tensor:
    if noise == 0:
        return imputed
    device = generator.device if generator is not None else imputed.device
    eps = torch.randn(imputed.shape, generator=generator, device=device, dtype=imputed.dtype).to(imputed.device)
    return imputed + noise * eps * removed[:, None]


def noisy_linear_imputation(images: torch.Tensor, masks: torch.Tensor, noise: float = 0.01,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation of the pixels ``masks`` marks (nonzero or True: removed).

    ``images`` ``(B, C, H, W)`` (model inputs, normalised), ``masks`` ``(B, H, W)`` or ``(B, 1, H, W)``.
    Every removed pixel gets, in each channel, the weighted mean of its 8 neighbours inside the image
    (weight 1/6 for the 4 direct neighbours, 1/12 for the diagonal ones, normalised by the weights of the
    neighbours that exist), removed neighbours included: one sparse linear system over all removed pixels
    of an image, as in Rong et al. 2022 and pytorch-grad-cam's ``NoisyLinearImputer``. Then Gaussian noise
    of standard deviation ``noise`` (absolute, in the images' units; 0: none) is added to the removed
    pixels only; kept pixels are returned unchanged. An image with every pixel removed has no data to
    interpolate from (the system is singular): its pixels become 0 (the dataset mean after
    normalisation) plus the noise.

    PyTorch has no sparse direct solver on the CPU (``torch.sparse.spsolve`` is CUDA-only), so the systems
    of all images and channels are solved together, matrix-free, by conjugate gradients (the matrix is
    symmetric positive definite) on the images' device, in float32 (float64 for float64 images), until
    each system's residual is below 1e-6 of its right-hand side: the values agree with a direct solve to
    about 1e-6 on small images (tested to 1e-5) and leave a far smaller error than the noise.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    B, _, H, W = images.shape
    if masks.shape != (B, H, W):
        raise ValueError(f"masks must be (B, H, W) = {(B, H, W)} for images {tuple(images.shape)}, "
                         f"got {tuple(masks.shape)}")
    if not noise >= 0:
        raise ValueError(f"noise={noise} must be >= 0")
    removed = (masks != 0).to(images.device)
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        out = _with_noise(_impute(images.to(work), removed), removed, noise, generator)
    return out.to(images.dtype)


def _road_thresholds(keys: torch.Tensor, percentiles: Sequence[float]) -> torch.Tensor:
    """``(N, P)``: per row of ``keys`` ``(N, n)``, its ``percentiles`` as ``numpy.percentile`` computes them
    for a Python number (method "linear", arithmetic in the keys' dtype), bit for bit, so that pixels tied
    with a threshold fall on the same side as in pytorch-grad-cam."""
    n = keys.shape[1]
    v = keys.sort(dim=1).values
    cols = []
    for pct in percentiles:
        q = float(pct) / 100
        index = n * q + (1 - q) - 1  # numpy's virtual index, same operations
        lo = min(max(math.floor(index), 0), n - 1)
        hi, g = min(lo + 1, n - 1), index - math.floor(index)
        a, b = v[:, lo], v[:, hi]
        cols.append(b - (b - a) * (1 - g) if g >= 0.5 else a + (b - a) * g)
    return torch.stack(cols, dim=1)


def _target_scores(model: Callable, images: torch.Tensor, classes: torch.Tensor, score: str) -> torch.Tensor:
    if score == "probability":
        return _probs(model, images, classes)
    return model(images).float().gather(1, classes[:, None])[:, 0]


@torch.inference_mode()
def _road_changes(model: Callable, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                  percentiles: Sequence[float], orders: Sequence[str], noise: float, batch_size: int,
                  generator: torch.Generator | None, score: str = "probability") -> torch.Tensor:
    """``(len(orders), B, P)`` changes of the target score: every (order, percentile, image) imputed and
    scored in batches of ``batch_size``."""
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    B, _, H, W = images.shape
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.shape != (B, H, W):
        raise ValueError(f"maps must be (B, H, W) = {(B, H, W)} for images {tuple(images.shape)}, "
                         f"got {tuple(maps.shape)}")
    percentiles = tuple(percentiles)
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles must be non-empty and each in (0, 100) exclusive, got {percentiles}")
    for order in orders:
        if order not in ("most", "least"):
            raise ValueError(f"order must be 'most' or 'least', got {order!r}")
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")
    if not noise >= 0:
        raise ValueError(f"noise={noise} must be >= 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    classes = classes.to(images.device).long().reshape(-1)
    if classes.shape != (B,):
        raise ValueError(f"classes must be (B,) = ({B},), got {classes.numel()} values")
    flat = maps.to(images.device, torch.float32).reshape(B, H * W)
    if not bool(flat.isfinite().all()):
        raise ValueError("maps contain NaN or inf")
    # pytorch-grad-cam keeps the pixels below the p-th percentile of the map (most relevant first) or of
    # 1 - map (least first) and imputes the rest; -map orders pixels as 1 - map does, without rounding.
    removed = []
    for order in orders:
        keys = flat if order == "most" else -flat
        removed.append(keys[:, None, :] >= _road_thresholds(keys, percentiles)[:, :, None])  # (B, P, H*W)
    removed = torch.stack(removed).transpose(1, 2).reshape(-1, H, W)  # rows in (order, percentile, image) order
    image_of = torch.arange(B, device=images.device).repeat(len(orders) * len(percentiles))
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    after = torch.empty(removed.shape[0], device=images.device)
    for start in range(0, removed.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        idx, mask = image_of[rows], removed[rows]
        imputed = _with_noise(_impute(images[idx].to(work), mask), mask, noise, generator)
        after[rows] = _target_scores(model, imputed.to(images.dtype), classes[idx], score)
    before = _target_scores(model, images, classes, score)
    return after.view(len(orders), len(percentiles), B).transpose(1, 2) - before[:, None]


def road(model: Callable, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
         percentiles: Sequence[float] = (20, 40, 60, 80), order: str = "most", noise: float = 0.01,
         batch_size: int = 64, generator: torch.Generator | None = None,
         score: str = "probability") -> torch.Tensor:
    """ROAD, Remove And Debias (Rong et al. 2022): ``(B, P)`` changes of the target class's score when the
    most (``order="most"``, MoRF) or least (``order="least"``, LeRF) relevant pixels are imputed.

    ``images`` are model inputs (normalised) ``(B, C, H, W)``, ``maps`` ``(B, H, W)`` at the images' size,
    ``classes`` ``(B,)``. For each image and percentile ``p`` (in (0, 100)), as pytorch-grad-cam's
    ``ROADMostRelevantFirst(percentile=p)`` / ``ROADLeastRelevantFirst(percentile=p)``:

    - ``t`` = the ``p``-th percentile of the map's values (``numpy.percentile``'s linear interpolation);
      ``"most"`` keeps the pixels with map < ``t`` and imputes the rest, the most relevant ``100 - p``
      percent; ``"least"`` does the same with the map negated (pytorch-grad-cam's ``1 - map``), keeping
      the most relevant ``p`` percent and imputing the least relevant ``100 - p`` percent. So ``p`` is
      the share of pixels *kept* in both orders (pixels tied with ``t`` are imputed).
    - the imputed pixels get :func:`noisy_linear_imputation` with ``noise``;
    - the value is the score on the imputed image minus the score on the original image (negative: the
      confidence dropped), where the score is the softmax probability of ``classes`` (``score=
      "probability"``, pytorch-grad-cam with ``ClassifierOutputSoftmaxTarget``, the default here as in
      :func:`deletion_insertion`) or the raw output (``"logit"``, ``ClassifierOutputTarget``).

    A faithful map gives a large drop (very negative) for ``"most"`` and a small one for ``"least"``.
    All images x percentiles are imputed and scored in batches of ``batch_size`` under
    ``torch.inference_mode``, on the images' device; ``generator`` seeds the noise.
    """
    return _road_changes(model, images, maps, classes, percentiles, (order,), noise, batch_size, generator,
                         score)[0]


def road_combined(model: Callable, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                  percentiles: Sequence[float] = (20, 40, 60, 80), noise: float = 0.01, batch_size: int = 64,
                  generator: torch.Generator | None = None, score: str = "probability") -> torch.Tensor:
    """``(B,)`` ROAD combined, as pytorch-grad-cam's ``ROADCombined``: ``(least - most) / 2`` of
    :func:`road`'s changes averaged over ``percentiles`` (higher is better). Both orders run in one
    batched pass. pytorch-grad-cam's default percentiles are 10, 20, ..., 90."""
    most, least = _road_changes(model, images, maps, classes, percentiles, ("most", "least"), noise, batch_size,
                                generator, score).mean(dim=2)
    return (least - most) / 2


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
