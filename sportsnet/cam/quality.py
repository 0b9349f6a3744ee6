"""Quality of heatmaps beyond localisation: the metric families papers report, batched on the device.

Each function is defined as in Quantus 0.6.0 (Hedström et al. 2023, "Quantus: An Explainable AI Toolkit for
Responsible Evaluation of Neural Network Explanations and Beyond"), with its defaults unless a docstring says
otherwise and why, and tested against it (``tests/cam/test_quality.py``). Quantus itself is not needed here:
everything is torch, on the inputs' device, in float32, over a whole batch at once.

Complexity (of the map alone; no model):
- :func:`sparseness`: the Gini index of the map's absolute values (Chalasani et al. 2020, "Concise
  Explanations of Neural Networks using Adversarial Training"; Quantus ``Sparseness``). Higher is sparser.
- :func:`complexity`: the Shannon entropy of the map's fractional contributions (Bhatt et al. 2020,
  "Evaluating and Aggregating Feature-based Model Explanations"; Quantus ``Complexity``). Lower is simpler.

Robustness (of the explainer; calls it on noisy copies of the inputs):
- :func:`sensitivity`: Max- and Avg-Sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of
  Explanations"; Quantus ``MaxSensitivity`` / ``AvgSensitivity``): how far the map moves, relative to its
  norm, under small uniform input noise. Lower is more robust.

Faithfulness (to the model; forward passes under ``torch.inference_mode``):
- :func:`faithfulness_correlation`: the Pearson correlation, over random pixel subsets, between the map's
  sum over a subset and the drop of the class's output when the subset is set to a baseline (Bhatt et al.
  2020; Quantus ``FaithfulnessCorrelation``). Higher is more faithful.

Similarity (of two batches of maps; what model-randomisation sanity checks, Adebayo et al. 2018, "Sanity
Checks for Saliency Maps", compare before and after randomising a model):
- :func:`spearman`: the Spearman rank correlation per pair of maps (Quantus ``correlation_spearman``, the
  default of ``MPRT``).
- :func:`ssim`: the structural similarity per pair of maps (Wang et al. 2004; skimage's
  ``structural_similarity`` as Quantus's ``ssim`` calls it, the default of ``RandomLogit``).

:func:`score_quality` computes the complexity, faithfulness and (given the explainers) robustness metrics for
a batch of maps of several methods, in the shape of :func:`sportsnet.cam.metrics.score_explanations`' result,
so that :class:`sportsnet.cam.metrics.RunningMeans` averages them over a dataset.

Where Quantus returns NaN (a constant map or a constant output has no correlation; an all-zero map no
entropy), these functions return a documented number instead, so that dataset means stay finite.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """``(B, H, W)`` float32 view of ``(B, H, W)`` or ``(B, 1, H, W)`` maps."""
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(f"{name} must be (B, H, W), got shape {tuple(maps.shape)}")
    return maps.float()


def _classes(classes: torch.Tensor, B: int, device) -> torch.Tensor:
    classes = torch.as_tensor(classes).to(device).long().reshape(-1)
    if classes.shape != (B,):
        raise ValueError(f"classes must be (B,) = ({B},), got {classes.numel()} values")
    return classes


def _images(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    return images


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Pearson correlation of the rows of ``x`` and ``y`` ``(B, n)``; 0 where either row is constant
    (where scipy.stats.pearsonr returns NaN)."""
    x, y = x.float(), y.float()
    constant = (x.amax(dim=1) == x.amin(dim=1)) | (y.amax(dim=1) == y.amin(dim=1))
    xc, yc = x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True)
    tiny = torch.finfo(torch.float32).tiny
    xc = xc / xc.abs().amax(dim=1, keepdim=True).clamp_min(tiny)  # scale-free: no under/overflow in the norms
    yc = yc / yc.abs().amax(dim=1, keepdim=True).clamp_min(tiny)
    r = (xc * yc).sum(dim=1) / (xc.norm(dim=1) * yc.norm(dim=1)).clamp_min(tiny)
    return torch.where(constant, torch.zeros_like(r), r.clamp(-1, 1))


def _draw_device(generator: torch.Generator | None, device) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


# --- complexity ----------------------------------------------------------------------------------------------------


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Sparseness (Chalasani et al. 2020; Quantus ``Sparseness``): the Gini index of each map's
    absolute values, in [0, 1), higher is sparser.

    With ``a_(1) <= ... <= a_(n)`` the ``n = H * W`` absolute values of a map sorted ascending,
    ``G = sum_i (2 i - n - 1) a_(i) / (n sum_i a_(i))``. A flat map gives 0, a map with a single nonzero pixel
    ``1 - 1/n``. Scale-free, so Quantus's default normalisation (dividing the whole batch by its largest
    absolute value) would change nothing, but Quantus then adds 1e-7 to every value, which this does not: that
    offset moves Quantus's index by about ``n * 1e-7 / sum_i a_(i)`` of the normalised map (2.6e-5 for a
    16x16 one-hot map at the batch's maximum, more for a map small next to the others of its batch, whose
    index Quantus thus makes depend on the batch). An all-zero map has no mass to concentrate and gives 0, as
    a flat map (Quantus: about 0 too, the 1e-7 making it flat).
    """
    a = _maps(maps).abs().flatten(1).sort(dim=1).values
    n = a.shape[1]
    weights = torch.arange(1 - n, n, 2, device=a.device, dtype=a.dtype)  # 2 i - n - 1 for i = 1..n
    total = a.sum(dim=1)
    gini = (a * weights).sum(dim=1) / (n * total).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(total > 0, gini, torch.zeros_like(gini))


def complexity(maps: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Complexity (Bhatt et al. 2020; Quantus ``Complexity``): the Shannon entropy (natural log) of
    each map's fractional contributions ``p_i = |a_i| / sum_j |a_j|``, ``-sum_i p_i log p_i`` with
    ``0 log 0 = 0``, in [0, log(H W)], lower is simpler.

    A map with a single nonzero pixel gives 0, a flat map ``log(H W)``. Scale-free, so Quantus's default
    normalisation changes nothing (Quantus writes ``p log(p + 1e-12)``, a difference of at most
    ``H W 1e-12``). An all-zero
    map has no contributions to distribute (Quantus divides 0 by 0 and returns NaN); it gives ``log(H W)``
    here, the entropy of the flat map it is the limit of, as :func:`sparseness` gives it a flat map's 0: a
    blank map scores as the least informative one, never as the simplest.
    """
    a = _maps(maps).abs().flatten(1)
    total = a.sum(dim=1, keepdim=True)
    p = a / total.clamp_min(torch.finfo(torch.float32).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=1)
    return torch.where(total[:, 0] > 0, entropy, torch.full_like(entropy, math.log(a.shape[1])))


# --- robustness ----------------------------------------------------------------------------------------------------


def sensitivity(explain: Explain, images: torch.Tensor, classes: torch.Tensor, *, samples: int = 10,
                radius: float = 0.2, generator: torch.Generator | None = None, batch_size: int | None = None,
                noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Max- and Avg-Sensitivity (Yeh et al. 2019; Quantus ``MaxSensitivity`` / ``AvgSensitivity``):
    ``{"max_sensitivity": (B,), "avg_sensitivity": (B,)}``, lower is more robust.

    ``explain(images, classes)`` is any callable returning ``(N, H', W')`` (or ``(N, 1, H', W')``) maps for
    ``(N, C, H, W)`` images and ``(N,)`` classes (any map size). ``images`` ``(B, C, H, W)`` are model inputs
    (normalised), ``classes`` ``(B,)``. With ``a = explain(x, y)`` and, for each of ``samples`` noisy copies
    ``x + e`` of each image, ``a_e = explain(x + e, y)``, the ratio is ``||a - a_e||_F / ||a||_F`` (Frobenius
    norms of the whole map, Quantus's default ``difference`` similarity and ``fro_norm`` numerator and
    denominator); Max-Sensitivity is its maximum over the samples, Avg-Sensitivity its mean. As in Quantus
    by default:

    - the noise ``e`` is uniform in ``[-radius, radius]``, drawn independently for every element (channel
      and pixel) of every copy: Quantus's ``batch_uniform_noise`` with ``lower_bound=0.2`` and no
      ``upper_bound``, so ``radius=0.2`` (in the images' units, i.e. after normalisation);
    - the maps are neither normalised nor made absolute (``normalise=False, abs=False``);
    - a sample counts whatever the model predicts on it (``return_nan_when_prediction_changes=False``).

    Quantus draws 200 samples per image; the default here, 10, keeps a CPU run cheap (Max-Sensitivity can
    only grow with more). Where ``||a||_F = 0`` the ratio is 0 if ``a_e`` is all-zero too (nothing moved)
    and 1 otherwise, the ratio of a map that vanishes (``a_e = 0``): a map appearing from a blank one is a
    complete change, not an infinite one (Quantus: NaN and inf, which would make a dataset's mean inf as
    soon as one image's map is blank, as ReLU-ed maps of a ViT sometimes are).

    The copies are explained ``batch_size`` at a time (default: ``B``, i.e. one call per sample over the
    whole batch, the memory of the call that made the maps); rows are ordered (sample, image), so a call
    holds whole samples when ``batch_size`` is a multiple of ``B``. ``explain`` runs as given (no
    ``inference_mode``: gradient methods need autograd); its maps are detached. ``generator`` seeds the
    noise, drawn on its device (the images' device without one) per call of ``explain``. ``noise``
    ``(samples, B, C, H, W)``, if given, is used instead of drawing (``samples`` and ``radius`` are then
    ignored): Quantus's draws, for a parity test, or another noise model.
    """
    images = _images(images)
    B = images.shape[0]
    classes = _classes(classes, B, images.device)
    if noise is not None:
        if noise.dim() != 5 or noise.shape[1:] != images.shape or noise.shape[0] < 1:
            raise ValueError(f"noise must be (samples, B, C, H, W) = (samples, {', '.join(map(str, images.shape))})"
                             f" with samples >= 1, got {tuple(noise.shape)}")
        samples = noise.shape[0]
    else:
        if samples < 1:
            raise ValueError(f"samples={samples} must be >= 1")
        if not (math.isfinite(radius) and radius >= 0):
            raise ValueError(f"radius={radius} must be finite and >= 0")
    if batch_size is None:
        batch_size = B
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = explain(x, y)
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"explain must return a torch.Tensor of maps, got {type(out).__name__}")
        out = _maps(out.detach(), "explain's maps")
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"explain returned {out.shape[0]} maps for {x.shape[0]} images")
        return out.to(images.device).flatten(1)

    reference = run(images, classes)
    ref_norm = reference.norm(dim=1)
    ratios = torch.empty(samples * B, device=images.device)
    draw_on = _draw_device(generator, images.device)
    for start in range(0, samples * B, batch_size):
        rows = torch.arange(start, min(start + batch_size, samples * B), device=images.device)
        img = rows % B
        if noise is not None:
            e = noise.reshape(samples * B, *images.shape[1:])[rows.to(noise.device)]
        else:
            u = torch.rand((rows.numel(), *images.shape[1:]), generator=generator, device=draw_on)
            e = (2 * u - 1) * radius
        noisy = images[img] + e.to(images.device, images.dtype)
        maps = run(noisy, classes[img])
        if maps.shape[1] != reference.shape[1]:
            raise ValueError(f"explain's maps on the noisy images have {maps.shape[1]} pixels, "
                             f"{reference.shape[1]} on the images")
        diff = (reference[img] - maps).norm(dim=1)
        den = ref_norm[img]
        ratios[rows] = torch.where(den > 0, diff / den.clamp_min(torch.finfo(torch.float32).tiny),
                                   (diff > 0).float())
    ratios = ratios.view(samples, B)
    return {"max_sensitivity": ratios.amax(dim=0), "avg_sensitivity": ratios.mean(dim=0)}


# --- faithfulness --------------------------------------------------------------------------------------------------


def _scores(model: Callable, images: torch.Tensor, classes: torch.Tensor, score: str) -> torch.Tensor:
    out = model(images).float()
    if score == "probability":
        out = out.softmax(dim=1)
    return out.gather(1, classes[:, None])[:, 0]


@torch.inference_mode()
def faithfulness_correlation(model: Callable, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, *,
                             runs: int = 32, subset_size: int | None = None, baseline: float = 0.0,
                             generator: torch.Generator | None = None, batch_size: int = 64,
                             score: str = "logit", subsets: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` Faithfulness Correlation (Bhatt et al. 2020; Quantus ``FaithfulnessCorrelation``), in
    [-1, 1], higher is more faithful.

    ``images`` ``(B, C, H, W)`` are model inputs (normalised), ``maps`` ``(B, H, W)`` at the images' size,
    ``classes`` ``(B,)``. For each image, ``runs`` times: draw a uniformly random set ``S`` of
    ``subset_size`` distinct pixels, set every channel of them to ``baseline``, and record the map's sum
    over ``S`` and the drop ``f(x) - f(x_S)`` of the class's output ``f``; the value is the Pearson
    correlation of the two over the runs. As in Quantus by default:

    - ``f`` is the raw model output, the logit (``score="logit"``; Quantus ``softmax=False``);
      ``score="probability"`` uses the softmax probability;
    - the difference is original minus perturbed (a drop is positive, so a faithful map correlates
      positively);
    - the maps are used signed (``abs=False``); Quantus's ``normalise=True`` divides the whole batch by one
      positive number, which a correlation ignores.

    Where this deviates from Quantus, and why:

    - Quantus's features are the elements of the ``C x H x W`` input: a subset is ``subset_size`` random
      (channel, pixel) values and the map is repeated over the channels. Here a feature is a pixel with all
      its channels, as the map has one value per pixel (and as :func:`sportsnet.cam.metrics.deletion_insertion`
      removes pixels). On one-channel images the two coincide.
    - ``subset_size`` defaults to ``H * W // 16`` pixels (16 of a 16x16 image, 3136 of 224x224), not
      Quantus's fixed 224 (of 150528 values for a 224x224 RGB image; more than 87% of a 16x16 image).
    - ``runs`` defaults to 32, not 100, to keep CPU runs cheap (``runs + 1`` forwards per image).
    - ``baseline`` defaults to 0.0, the dataset mean after normalisation (what the deletion metric
      removes to), not Quantus's ``"black"`` (each image's minimum value).
    - a map (or a model) whose subset sums (drops) are all equal gives 0, not NaN: a flat or blank map
      has no ranking to correlate.

    All ``B * runs`` perturbed images (rows ordered (image, run)) and the originals go through the model
    ``batch_size`` at a time under ``torch.inference_mode``, on the images' device. ``generator`` seeds the
    subsets, drawn on its device (the images' device without one) per forward. ``subsets`` ``(B, runs, k)``
    pixel indices (``y * W + x``, distinct per row), if given, are used instead of drawing (``runs`` and
    ``subset_size`` are then ignored).
    """
    images = _images(images)
    B, C, H, W = images.shape
    maps = _maps(maps)
    if maps.shape != (B, H, W):
        raise ValueError(f"maps must be (B, H, W) = {(B, H, W)} for images {tuple(images.shape)}, "
                         f"got {tuple(maps.shape)}")
    classes = _classes(classes, B, images.device)
    n = H * W
    if subsets is not None:
        if subsets.dim() != 3 or subsets.shape[0] != B or subsets.shape[1] < 2 or not 1 <= subsets.shape[2] <= n:
            raise ValueError(f"subsets must be (B, runs, k) = ({B}, runs >= 2, 1 <= k <= {n}) pixel indices, "
                             f"got {tuple(subsets.shape)}")
        if subsets.dtype.is_floating_point or bool((subsets < 0).any() | (subsets >= n).any()):
            raise ValueError(f"subsets must hold integer pixel indices in [0, {n})")
        if bool((subsets.sort(dim=2).values.diff(dim=2) == 0).any()):
            raise ValueError("subsets must hold distinct pixel indices in each (image, run)")
        runs, k = subsets.shape[1], subsets.shape[2]
        subsets = subsets.to(images.device).long().reshape(B * runs, k)
    else:
        if runs < 2:
            raise ValueError(f"runs={runs} must be >= 2 (a correlation needs two points)")
        k = max(1, n // 16) if subset_size is None else subset_size
        if not 1 <= k <= n:
            raise ValueError(f"subset_size={subset_size} must be in [1, H * W = {n}]")
    if score not in ("logit", "probability"):
        raise ValueError(f"score must be 'logit' or 'probability', got {score!r}")
    if not math.isfinite(baseline):
        raise ValueError(f"baseline={baseline} must be finite")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")

    flat = maps.to(images.device).reshape(B, n)
    before = torch.cat([_scores(model, images[s:s + batch_size], classes[s:s + batch_size], score)
                        for s in range(0, B, batch_size)])
    drops = torch.empty(B * runs, device=images.device)
    sums = torch.empty(B * runs, device=images.device)
    draw_on = _draw_device(generator, images.device)
    for start in range(0, B * runs, batch_size):
        rows = torch.arange(start, min(start + batch_size, B * runs), device=images.device)
        img = rows // runs
        if subsets is not None:
            idx = subsets[rows]
        else:
            idx = torch.rand((rows.numel(), n), generator=generator, device=draw_on).argsort(dim=1)[:, :k]
            idx = idx.to(images.device)
        removed = torch.zeros(rows.numel(), n, dtype=torch.bool, device=images.device).scatter_(1, idx, True)
        x = images[img]
        x = torch.where(removed.view(-1, 1, H, W), torch.full_like(x, baseline), x)
        drops[rows] = before[img] - _scores(model, x, classes[img], score)
        sums[rows] = flat[img].gather(1, idx).sum(dim=1)  # the same reduction for every row: equal maps, equal sums
    return _pearson(sums.view(B, runs), drops.view(B, runs))


# --- similarity ----------------------------------------------------------------------------------------------------


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _maps(a, "a"), _maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (B, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b.to(a.device)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of each row of ``x`` ``(B, n)``, ties given their average rank (scipy.stats.rankdata's
    ``"average"``)."""
    v, order = x.sort(dim=1)
    B, n = x.shape
    pos = torch.arange(n, device=x.device).expand(B, n)
    first = torch.ones(B, n, dtype=torch.bool, device=x.device)
    first[:, 1:] = v[:, 1:] != v[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, torch.zeros_like(pos)).cummax(dim=1).values
    end = torch.where(last, pos, torch.full_like(pos, n - 1)).flip(1).cummin(dim=1).values.flip(1)
    avg = (start + end).float() / 2 + 1
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Spearman rank correlation of each pair of maps ``a[i]``, ``b[i]`` (``(B, H, W)`` each), over
    their ``H * W`` pixels: the Pearson correlation of their ranks, ties given their average rank, as
    ``scipy.stats.spearmanr`` (and Quantus's ``correlation_spearman``, on the maps as given: Quantus's
    ``MPRT`` takes absolute values and normalises first, which the caller does if it wants them). In
    [-1, 1]; 0 where either map is constant (scipy: NaN), e.g. a randomised model's blank map.
    """
    a, b = _pair(a, b)
    return _pearson(_ranks(a.flatten(1)), _ranks(b.flatten(1)))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """``(B,)`` structural similarity (Wang et al. 2004) of each pair of single-channel maps ``a[i]``,
    ``b[i]`` (``(B, H, W)`` each, ``H, W >= 7``), as ``skimage.metrics.structural_similarity(a[i], b[i],
    data_range=R)`` with its defaults: a 7x7 uniform window, ``K1 = 0.01``, ``K2 = 0.03``, sample
    (co)variances (``N / (N - 1)`` with ``N = 49``), and the mean of the SSIM map over the windows that lie
    inside the image (skimage crops 3 pixels off each border).

    ``data_range=None`` (the default) takes ``R`` per pair as ``max(a[i], b[i]) - min(a[i], b[i])`` over both
    maps, as Quantus's ``ssim`` does (skimage itself requires it for float images); a float uses that ``R``
    for every pair. Two equal constant maps (``R = 0``) give 1 (skimage: NaN). Quantus's ``RandomLogit``
    calls ``ssim`` on maps flattened to 1-D, so its numbers differ from this 2-D SSIM of the maps.
    """
    a, b = _pair(a, b)
    B, H, W = a.shape
    win = 7
    if H < win or W < win:
        raise ValueError(f"maps must be at least {win}x{win} for SSIM's {win}x{win} window, got {H}x{W}")
    if data_range is None:
        hi = torch.maximum(a.amax(dim=(1, 2)), b.amax(dim=(1, 2)))
        lo = torch.minimum(a.amin(dim=(1, 2)), b.amin(dim=(1, 2)))
        R = (hi - lo).view(B, 1, 1, 1)
    else:
        if not (math.isfinite(data_range) and data_range > 0):
            raise ValueError(f"data_range={data_range} must be finite and > 0 (or None: per pair)")
        R = torch.full((B, 1, 1, 1), float(data_range), device=a.device)
    # Shift both maps of a pair by their joint mean: the (co)variances do not change and lose less to
    # cancellation in float32; the means are shifted back for the luminance term.
    m = ((a.mean(dim=(1, 2)) + b.mean(dim=(1, 2))) / 2).view(B, 1, 1, 1)
    x, y = a[:, None] - m, b[:, None] - m
    f = lambda t: F.avg_pool2d(t, win, stride=1)  # noqa: E731  (valid windows only = skimage's crop)
    ux, uy = f(x), f(y)
    cov_norm = win * win / (win * win - 1)
    vx = cov_norm * (f(x * x) - ux * ux)
    vy = cov_norm * (f(y * y) - uy * uy)
    vxy = cov_norm * (f(x * y) - ux * uy)
    ux, uy = ux + m, uy + m
    C1, C2 = (0.01 * R) ** 2, (0.03 * R) ** 2
    S = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux * ux + uy * uy + C1) * (vx + vy + C2))
    out = S.mean(dim=(1, 2, 3))
    return torch.where(R.view(B) > 0, out, torch.ones_like(out))


# --- all of them ---------------------------------------------------------------------------------------------------


def score_quality(model: Callable, images: torch.Tensor, maps: dict[str, torch.Tensor], classes: torch.Tensor, *,
                  explainers: dict[str, Explain] | None = None, generator: torch.Generator | None = None,
                  runs: int = 32, subset_size: int | None = None, baseline: float = 0.0, batch_size: int = 64,
                  score: str = "logit", samples: int = 10, radius: float = 0.2,
                  explain_batch_size: int | None = None, faithfulness: bool = True) -> dict[str, torch.Tensor]:
    """The quality metrics of this module for one batch, per image: ``{"<metric>/<name>": (B,) values}``,
    the shape of :func:`sportsnet.cam.metrics.score_explanations`' result (average them over a dataset with
    :class:`sportsnet.cam.metrics.RunningMeans`).

    ``maps`` holds one ``(B, H, W)`` map per method name (the images' size); ``classes`` ``(B,)`` is the class
    each map explains. For every name: ``sparseness/<name>``, ``complexity/<name>`` and
    ``faithfulness_correlation/<name>`` (:func:`faithfulness_correlation` with ``runs`` (32), ``subset_size``
    (``H * W // 16``), ``baseline`` (0.0), ``batch_size`` (64) and ``score`` ("logit")). For every name with an
    explainer ``explainers[name](images, classes) -> (B, H', W')`` also ``max_sensitivity/<name>`` and
    ``avg_sensitivity/<name>`` (:func:`sensitivity` with ``samples`` (10), ``radius`` (0.2) and
    ``explain_batch_size`` (``B``)); the reference map is the explainer's own on the clean images (one more
    call), so that it is compared with maps made the same way. ``generator`` seeds the subsets and the noise.
    ``faithfulness=False`` skips faithfulness correlation (its forwards), e.g. to report only what is cheap.
    """
    explainers = explainers or {}
    unknown = sorted(set(explainers) - set(maps))
    if unknown:
        raise ValueError(f"explainers {unknown} have no maps (maps has {sorted(maps)})")
    out: dict[str, torch.Tensor] = {}
    for name, m in maps.items():
        out[f"sparseness/{name}"] = sparseness(m)
        out[f"complexity/{name}"] = complexity(m)
        if faithfulness:
            out[f"faithfulness_correlation/{name}"] = faithfulness_correlation(
                model, images, m, classes, runs=runs, subset_size=subset_size, baseline=baseline,
                generator=generator, batch_size=batch_size, score=score)
        if name in explainers:
            sens = sensitivity(explainers[name], images, classes, samples=samples, radius=radius,
                               generator=generator, batch_size=explain_batch_size)
            out[f"max_sensitivity/{name}"] = sens["max_sensitivity"]
            out[f"avg_sensitivity/{name}"] = sens["avg_sensitivity"]
    return out
