"""sportsnet.cam.quality against Quantus 0.6.0 (and scipy, skimage) on a tiny CNN, and on hand-made cases.

Quantus draws its noise and subsets with numpy's global RNG; the parity tests feed our functions the very
same draws (seeding numpy for the noise, replaying our subsets through a patched ``np.random.choice``).
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

from sportsnet.cam.metrics import RunningMeans
from sportsnet.cam.quality import (
    complexity,
    faithfulness_correlation,
    score_quality,
    sensitivity,
    sparseness,
    spearman,
    ssim,
)

B, C, H, W = 3, 3, 16, 16


def _quantus():
    return pytest.importorskip("quantus", reason="quantus (the test extra) is the reference these metrics are "
                                                 "checked against")


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(self.features(x))


class Linear(nn.Module):
    """Class k's logit is sum(w_k * x): the per-pixel effect of setting a pixel to 0 is sum_c w_kc * x_c."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.w = nn.Parameter(torch.randn(classes, C, H, W, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x, self.w)


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, C, H, W, generator=g), torch.tensor([0, 2, 1])


def gradient_x_input(model):
    """A map that depends on the input nonlinearly: the channel sum of gradient x input."""
    def explain(x, y):
        x = x.detach().float().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)
        return (g * x).sum(dim=1).detach()
    return explain


# --- complexity ----------------------------------------------------------------------------------------------------


def test_sparseness_and_complexity_match_quantus(cnn, data):
    quantus = _quantus()
    x, y = data
    maps = torch.zeros(4, H, W)
    maps[0] = torch.randn(H, W, generator=torch.Generator().manual_seed(2))  # signed: both take |a|
    maps[1, 3, 5] = 2.0  # one-hot
    maps[2] = 0.5  # flat
    maps[3] = gradient_x_input(cnn)(x[:1], y[:1])[0]
    x4, y4 = torch.cat([x, x[:1]]), torch.cat([y, y[:1]])
    kw = dict(model=cnn, x_batch=x4.numpy(), y_batch=y4.numpy(), channel_first=True, softmax=False, device="cpu")
    # Quantus's Sparseness adds 1e-7 to the maps after dividing the whole batch by its largest |value| (its
    # default normalisation, which a scale-free index otherwise ignores): that moves a map's index by about
    # H * W * 1e-7 / (its sum) -- 2.6e-5 for the one-hot map at the batch's maximum, 1e-3 for a map a
    # thousandth of it. So: the formula to 1e-6 with maps at 1e3 and no normalisation, where the offset is
    # 1e-10 of them, and Quantus's defaults on maps of maximum 1 to the offset's 3e-5.
    unit = maps / maps.abs().amax(dim=(1, 2), keepdim=True)
    for metric, ours, tol in ((quantus.Sparseness, sparseness, 3e-5), (quantus.Complexity, complexity, 1e-5)):
        exact = metric(normalise=False, disable_warnings=True)(a_batch=(1e3 * unit).double().numpy(), **kw)
        torch.testing.assert_close(ours(maps), torch.tensor(exact, dtype=torch.float32), rtol=0, atol=1e-6)
        default = metric(disable_warnings=True)(a_batch=unit.double().numpy(), **kw)
        torch.testing.assert_close(ours(maps), torch.tensor(default, dtype=torch.float32), rtol=0, atol=tol)


def test_sparseness_and_complexity_of_extreme_maps():
    n = H * W
    one_hot, flat, blank = torch.zeros(H, W), torch.full((H, W), 3.0), torch.zeros(H, W)
    one_hot[4, 7] = -5.0
    maps = torch.stack([one_hot, flat, blank])
    torch.testing.assert_close(sparseness(maps), torch.tensor([1 - 1 / n, 0.0, 0.0]))
    torch.testing.assert_close(complexity(maps), torch.tensor([0.0, math.log(n), math.log(n)]))
    half = torch.zeros(1, H, W)
    half[0, : H // 2] = 1.0  # n/2 equal values, n/2 zeros: Gini 1/2, entropy log(n/2)
    torch.testing.assert_close(sparseness(half), torch.tensor([0.5]))
    torch.testing.assert_close(complexity(half[:, None]), torch.tensor([math.log(n / 2)]))  # (B, 1, H, W) too


# --- robustness ----------------------------------------------------------------------------------------------------


def test_sensitivity_matches_quantus_with_the_same_noise(cnn, data):
    quantus = _quantus()
    x, y = data
    explain = gradient_x_input(cnn)

    def q_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    samples, radius = 3, 0.2  # Quantus's default bound
    kw = dict(model=cnn, x_batch=x.numpy(), y_batch=y.numpy(), channel_first=True, explain_func=q_explain,
              softmax=False, device="cpu")
    np.random.seed(5)
    q_max = quantus.MaxSensitivity(nr_samples=samples, disable_warnings=True)(**kw)
    np.random.seed(6)
    q_avg = quantus.AvgSensitivity(nr_samples=samples, disable_warnings=True)(**kw)

    def quantus_noise(seed):  # batch_uniform_noise's draws: one (B, C*H*W) array per sample
        np.random.seed(seed)
        e = np.stack([np.random.uniform(-radius, radius, size=(B, C * H * W)) for _ in range(samples)])
        return torch.from_numpy(e.reshape(samples, B, C, H, W)).float()

    ours_max = sensitivity(explain, x, y, noise=quantus_noise(5))["max_sensitivity"]
    ours_avg = sensitivity(explain, x, y, noise=quantus_noise(6), batch_size=2)["avg_sensitivity"]
    torch.testing.assert_close(ours_max, torch.tensor(q_max, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_avg, torch.tensor(q_avg, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    assert (ours_max > 0.1).all() and (ours_avg > 0.1).all()  # the maps do move


def test_sensitivity_by_hand(data):
    x, y = data
    fixed = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(4))
    for bs in (None, 2, 5, 9):  # whole samples per call or rows split across calls: classes must follow
        out = sensitivity(lambda xs, ys: fixed[ys], x, y, samples=3, batch_size=bs)
        assert out["max_sensitivity"].tolist() == [0.0] * B and out["avg_sensitivity"].tolist() == [0.0] * B
    # maps = channel 0 of the input: the ratio is ||e_0|| / ||x_0|| for each noise e
    noise = torch.rand(4, B, C, H, W, generator=torch.Generator().manual_seed(5)) - 0.5
    ratios = noise[:, :, 0].flatten(2).norm(dim=2) / x[:, 0].flatten(1).norm(dim=1)
    out = sensitivity(lambda xs, ys: xs[:, 0], x, y, noise=noise, batch_size=5)
    torch.testing.assert_close(out["max_sensitivity"], ratios.amax(dim=0))
    torch.testing.assert_close(out["avg_sensitivity"], ratios.mean(dim=0))
    # drawn noise: uniform in [-radius, radius], seeded by the generator
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = sensitivity(lambda xs, ys: xs[:, 0], x, y, samples=50, radius=0.1, generator=g())
    b = sensitivity(lambda xs, ys: xs[:, 0], x, y, samples=50, radius=0.1, generator=g())
    assert torch.equal(a["max_sensitivity"], b["max_sensitivity"])
    bound = 0.1 * math.sqrt(H * W) / x[:, 0].flatten(1).norm(dim=1)  # every |e| <= radius
    expected = 0.1 / math.sqrt(3) * math.sqrt(H * W) / x[:, 0].flatten(1).norm(dim=1)  # E e^2 = radius^2 / 3
    assert (a["max_sensitivity"] <= bound).all()
    torch.testing.assert_close(a["avg_sensitivity"], expected, rtol=0.05, atol=0)
    # a blank reference: 0 if the noisy maps are blank too, 1 (as a map that vanishes) if not
    zero = sensitivity(lambda xs, ys: xs[:, 0] * 0, x, y, samples=2)
    moved = sensitivity(lambda xs, ys: xs[:, 0] - x[:, 0], x, y, samples=2)
    assert zero["max_sensitivity"].tolist() == [0.0] * B and moved["max_sensitivity"].tolist() == [1.0] * B
    vanished = sensitivity(lambda xs, ys: xs[:, 0] * float(torch.equal(xs, x)), x, y, samples=2)  # blank if noisy
    assert vanished["max_sensitivity"].tolist() == [1.0] * B


# --- faithfulness --------------------------------------------------------------------------------------------------


def test_faithfulness_correlation_matches_quantus_on_the_same_subsets(cnn, data, monkeypatch):
    quantus = _quantus()
    x, y = data
    runs, k = 6, 20
    maps = gradient_x_input(cnn)(x, y)
    subsets = torch.rand(B, runs, H * W, generator=torch.Generator().manual_seed(8)).argsort(dim=2)[..., :k]
    # Quantus draws (channel, pixel) values, run by run and image by image: replay our pixel subsets with
    # all their channels (its map sums are then C times ours, which a correlation ignores).
    draws = iter([np.concatenate([c * H * W + subsets[i, r].numpy() for c in range(C)])
                  for r in range(runs) for i in range(B)])

    def choice(n, size, replace=True):
        assert (n, size, replace) == (C * H * W, C * k, False)
        return next(draws)

    monkeypatch.setattr(np.random, "choice", choice)
    theirs = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=C * k, perturb_baseline=0.0,
                                             return_aggregate=False, disable_warnings=True)(
        model=cnn, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy(), channel_first=True, softmax=False,
        device="cpu")
    monkeypatch.undo()
    ours = faithfulness_correlation(cnn, x, maps, y, subsets=subsets, batch_size=4)
    torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float32), rtol=0, atol=1e-5)
    assert ours.abs().max() > 0.1  # not a vacuous agreement at 0


def test_faithfulness_correlation_of_the_true_effect_is_one():
    g = torch.Generator().manual_seed(9)
    model = Linear().eval()
    x, y = torch.randn(2, C, H, W, generator=g), torch.tensor([1, 2])
    effect = (model.w[y] * x).sum(dim=1).detach()  # setting a pixel to 0 lowers the logit by exactly this
    kw = dict(runs=12, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(faithfulness_correlation(model, x, effect, y, **kw), torch.ones(2), rtol=0, atol=1e-4)
    kw["generator"].manual_seed(10)
    torch.testing.assert_close(faithfulness_correlation(model, x, -effect, y, **kw), -torch.ones(2), rtol=0,
                               atol=1e-4)
    noise = torch.randn(2, H, W, generator=g)
    assert (faithfulness_correlation(model, x, noise, y, runs=12, generator=g) < 0.9).all()
    # a flat or blank map ranks no subset above another: 0 (Quantus: NaN)
    assert faithfulness_correlation(model, x, torch.ones(2, H, W), y, runs=4).tolist() == [0.0, 0.0]
    assert faithfulness_correlation(model, x, torch.zeros(2, H, W), y, runs=4).tolist() == [0.0, 0.0]


def test_faithfulness_correlation_batching_and_seeding(cnn, data):
    x, y = data
    maps = torch.randn(B, H, W, generator=torch.Generator().manual_seed(11))
    subsets = torch.rand(B, 5, H * W, generator=torch.Generator().manual_seed(12)).argsort(dim=2)[..., :30]
    whole = faithfulness_correlation(cnn, x, maps, y, subsets=subsets, batch_size=64)
    torch.testing.assert_close(faithfulness_correlation(cnn, x, maps, y, subsets=subsets, batch_size=4), whole)
    one = lambda: faithfulness_correlation(cnn, x, maps, y, runs=5, generator=torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.equal(one(), one())
    p = faithfulness_correlation(cnn, x, maps, y, subsets=subsets, score="probability")
    assert p.shape == (B,) and not torch.equal(p, whole)


# --- similarity ----------------------------------------------------------------------------------------------------


def test_spearman_matches_scipy_and_quantus_with_ties():
    quantus = _quantus()
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(13)
    a = torch.randint(0, 5, (4, H, W), generator=g).float()  # many ties
    b = a + torch.randint(0, 3, (4, H, W), generator=g).float()
    b[3] = torch.randn(H, W, generator=g)  # no ties in one of the pair
    ours = spearman(a, b)
    theirs = torch.tensor([spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(4)],
                          dtype=torch.float32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    q = quantus.functions.similarity_func.correlation_spearman(a.flatten(1).numpy(), b.flatten(1).numpy(),
                                                               batched=True)
    torch.testing.assert_close(ours, torch.tensor(q, dtype=torch.float32), rtol=0, atol=1e-5)
    torch.testing.assert_close(spearman(a, a), torch.ones(4))
    torch.testing.assert_close(spearman(a, -a), -torch.ones(4))
    assert spearman(torch.ones(1, H, W), b[:1]).tolist() == [0.0]  # constant: 0 (scipy: NaN)


def test_ssim_matches_skimage_and_quantus():
    quantus = _quantus()
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(14)
    a = torch.nn.functional.interpolate(torch.rand(3, 1, 4, 5, generator=g), size=(16, 20), mode="bilinear")[:, 0]
    b = a + 0.2 * torch.randn(3, 16, 20, generator=g)
    b[2] = 5 * a[2] + 3  # a very different range and offset
    ours = ssim(a, b)
    for i in range(3):
        ai, bi = a[i].double().numpy(), b[i].double().numpy()
        joint = max(ai.max(), bi.max()) - min(ai.min(), bi.min())
        assert ours[i].item() == pytest.approx(structural_similarity(ai, bi, data_range=joint), abs=1e-5)
        assert ours[i].item() == pytest.approx(quantus.functions.similarity_func.ssim(ai, bi), abs=1e-5)
        fixed = structural_similarity(ai, bi, data_range=2.0)
        assert ssim(a[i:i + 1], b[i:i + 1], data_range=2.0).item() == pytest.approx(fixed, abs=1e-5)
    torch.testing.assert_close(ssim(a, a), torch.ones(3))
    assert ssim(torch.full((1, 8, 8), 0.3), torch.full((1, 8, 8), 0.3)).tolist() == [1.0]  # equal constants


# --- all of them, and the errors ----------------------------------------------------------------------------------


def test_score_quality_feeds_running_means(cnn, data):
    x, y = data
    explain = gradient_x_input(cnn)
    maps = {"gxi": explain(x, y), "flat": torch.ones(B, H, W)}
    out = score_quality(cnn, x, maps, y, explainers={"gxi": explain}, generator=torch.Generator().manual_seed(0),
                        runs=4, samples=2)
    assert sorted(out) == sorted([f"{m}/{n}" for m in ("sparseness", "complexity", "faithfulness_correlation")
                                  for n in ("gxi", "flat")] + ["max_sensitivity/gxi", "avg_sensitivity/gxi"])
    assert all(v.shape == (B,) and v.isfinite().all() for v in out.values())
    assert out["sparseness/flat"].tolist() == [0.0] * B
    means = RunningMeans()
    means.update(out)
    assert set(means.means()) == set(out)
    with pytest.raises(ValueError, match=r"explainers \['other'\] have no maps"):
        score_quality(cnn, x, maps, y, explainers={"other": explain})


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: sparseness(torch.zeros(H, W)), r"maps must be \(B, H, W\), got shape \(16, 16\)"),
    (lambda m, x, y: complexity(torch.zeros(2, 3, H, W)), r"maps must be \(B, H, W\)"),
    (lambda m, x, y: spearman(torch.zeros(2, H, W), torch.zeros(2, H, 8)), r"same shape.*\(2, 16, 8\)"),
    (lambda m, x, y: ssim(torch.zeros(2, 6, 9), torch.zeros(2, 6, 9)), r"at least 7x7.*6x9"),
    (lambda m, x, y: ssim(torch.zeros(2, H, W), torch.zeros(2, H, W), data_range=0), r"data_range=0 "),
    (lambda m, x, y: sensitivity(lambda a, b: a[:, 0], x, y, samples=0), r"samples=0 "),
    (lambda m, x, y: sensitivity(lambda a, b: a[:, 0], x, y, radius=-1.0), r"radius=-1.0 "),
    (lambda m, x, y: sensitivity(lambda a, b: a[:, 0], x, y, batch_size=0), r"batch_size=0 "),
    (lambda m, x, y: sensitivity(lambda a, b: a, x, y), r"explain's maps must be \(B, H, W\)"),
    (lambda m, x, y: sensitivity(lambda a, b: a[:1, 0], x, y), r"explain returned 1 maps for 3 images"),
    (lambda m, x, y: sensitivity(lambda a, b: a[:, 0], x, y, noise=torch.zeros(2, B, C, H, 8)), r"noise must be"),
    (lambda m, x, y: sensitivity(lambda a, b: a[:, 0], x[0], y), r"images must be \(B, C, H, W\)"),
    (lambda m, x, y: sensitivity(lambda a, b: a[:, 0], x, y[:2]), r"classes must be \(B,\) = \(3,\), got 2"),
    (lambda m, x, y: faithfulness_correlation(m, x, torch.zeros(B, H, 8), y), r"maps must be .* got \(3, 16, 8\)"),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, runs=1), r"runs=1 must be >= 2"),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, subset_size=257), r"subset_size=257 "),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, subset_size=0), r"subset_size=0 "),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, score="softmax"), r"score must be .*'softmax'"),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, batch_size=0), r"batch_size=0 "),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, baseline=math.nan), r"baseline=nan "),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, subsets=torch.zeros(B, 1, 4, dtype=torch.long)),
     r"subsets must be \(B, runs, k\).*got \(3, 1, 4\)"),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, subsets=torch.full((B, 2, 4), 256)),
     r"integer pixel indices in \[0, 256\)"),
    (lambda m, x, y: faithfulness_correlation(m, x, x[:, 0], y, subsets=torch.zeros(B, 2, 4, dtype=torch.long)),
     r"distinct pixel indices"),
])
def test_bad_shapes_and_options_raise(cnn, data, call, match):
    with pytest.raises(ValueError, match=match):
        call(cnn, *data)
