"""sportsnet.cam.metrics and sportsnet.cam.overlay on constructed maps and a toy model."""
import re

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sportsnet.cam.metrics import (
    average_drop_increase,
    center_maps,
    deletion_insertion,
    energy_in_box,
    noisy_linear_imputation,
    pointing_game,
    random_maps,
    road,
    road_combined,
    score_explanations,
)
from sportsnet.cam.overlay import colorize, overlay, save_grid

BOXES = torch.tensor([[2, 3, 6, 8], [0, 0, 4, 4]])  # x0, y0, x1, y1 (exclusive)


def test_pointing_game_hits_and_misses():
    maps = torch.zeros(2, 10, 10)
    maps[0, 5, 4] = 1.0  # (y=5, x=4): inside box 0
    maps[1, 9, 9] = 1.0  # outside box 1
    assert pointing_game(maps, BOXES).tolist() == [True, False]
    maps[1, 4, 4] = 2.0  # just past the exclusive corner of box 1
    assert pointing_game(maps, BOXES).tolist() == [True, False]
    assert pointing_game(maps, BOXES, tolerance=1).tolist() == [True, True]
    assert pointing_game(torch.zeros(2, 10, 10), BOXES).tolist() == [False, False]  # a blank map points nowhere


def test_energy_in_box_is_the_share_of_mass_inside():
    maps = torch.ones(2, 10, 10)
    torch.testing.assert_close(energy_in_box(maps, BOXES), torch.tensor([20 / 100, 16 / 100]))
    inside_only = torch.zeros(2, 10, 10)
    inside_only[0, 3:8, 2:6] = 0.5
    assert energy_in_box(inside_only, BOXES).tolist() == [1.0, 0.0]


def test_random_maps_are_seeded_smooth_and_normalised():
    a = random_maps((3, 32, 32), generator=torch.Generator().manual_seed(1))
    b = random_maps((3, 32, 32), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    assert torch.allclose(a.amin(dim=(1, 2)), torch.zeros(3))
    assert torch.allclose(a.amax(dim=(1, 2)), torch.ones(3), atol=1e-6)
    assert (a[:, :, 1:] - a[:, :, :-1]).abs().max() < 0.3  # smooth: no pixel-to-pixel noise


def test_center_maps_point_at_the_centre():
    maps = center_maps((2, 9, 7))
    assert maps.shape == (2, 9, 7) and maps[0, 4, 3] == 1 and maps.min() >= 0
    boxes = torch.tensor([[2, 3, 5, 6], [0, 0, 2, 2]])  # around the centre; in a corner
    assert pointing_game(maps, boxes).tolist() == [True, False]


class Patch(nn.Module):
    """Class 0's logit grows with the mean of channel 0 inside a fixed patch; class 1's is constant."""

    def forward(self, x):
        evidence = 8 * (x[:, 0, 2:6, 2:6].mean(dim=(1, 2)) - 0.5)
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def test_deletion_and_insertion_reward_the_right_map():
    images = torch.zeros(2, 3, 8, 8)
    images[:, 0, 2:6, 2:6] = 1.0  # the object the toy model looks at; blurring spreads it thin
    right = torch.zeros(2, 8, 8)
    right[:, 2:6, 2:6] = 1.0
    right += torch.linspace(0, 0.01, 64).view(8, 8)  # break ties deterministically
    wrong = 1 - right
    classes = torch.zeros(2, dtype=torch.long)
    good = deletion_insertion(Patch(), images, right, classes, steps=8)
    bad = deletion_insertion(Patch(), images, wrong, classes, steps=8)
    assert (good["deletion"] < bad["deletion"] - 0.1).all()
    assert (good["insertion"] > bad["insertion"] + 0.1).all()
    assert good["deletion_curve"].shape == (2, 9)
    p = lambda logit: torch.softmax(torch.tensor([logit, 0.0]), 0)[0].expand(2)  # noqa: E731
    torch.testing.assert_close(good["deletion_curve"][:, 0], p(4.0))  # nothing deleted yet
    torch.testing.assert_close(good["deletion_curve"][:, 4], p(-4.0))  # the 16 patch pixels are gone
    torch.testing.assert_close(good["insertion_curve"][:, 4], p(4.0))  # ... or all revealed


def test_average_drop_and_increase_in_confidence():
    images = torch.full((2, 3, 8, 8), 1.0)
    keep = average_drop_increase(Patch(), images, torch.ones(2, 8, 8), torch.zeros(2, dtype=torch.long))
    assert keep == {"average_drop": 0.0, "increase_in_confidence": 0.0}
    y = torch.softmax(torch.tensor([4.0, 0.0]), 0)[0].item()  # mean 1 -> logit 4
    o = torch.softmax(torch.tensor([0.0, 0.0]), 0)[0].item()  # mean 0.5 -> logit 0
    half = average_drop_increase(Patch(), images, torch.full((2, 8, 8), 0.5), torch.zeros(2, dtype=torch.long))
    assert half["average_drop"] == pytest.approx(100 * (y - o) / y, rel=1e-5) and half["increase_in_confidence"] == 0


def test_metrics_check_shapes():
    with pytest.raises(ValueError, match=r"boxes must be \(B, 4\)"):
        pointing_game(torch.zeros(2, 4, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\)"):
        energy_in_box(torch.zeros(4, 4), BOXES)


# --- ROAD ---------------------------------------------------------------------------------------------------------

NEIGHBOURS = {(dy, dx): (1 / 6 if dy == 0 or dx == 0 else 1 / 12)
              for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)}


def dense_imputation(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The imputation's linear system written out pixel by pixel and solved densely, in float64."""
    C, H, W = image.shape
    holes = [(y, x) for y in range(H) for x in range(W) if removed[y, x]]
    row = {yx: i for i, yx in enumerate(holes)}
    A = torch.zeros(len(holes), len(holes), dtype=torch.float64)
    rhs = torch.zeros(len(holes), C, dtype=torch.float64)
    for i, (y, x) in enumerate(holes):
        for (dy, dx), w in NEIGHBOURS.items():
            ny, nx = y + dy, x + dx
            if 0 <= ny < H and 0 <= nx < W:
                A[i, i] += w  # x_i * (sum of the weights of the neighbours inside the image) ...
                if removed[ny, nx]:
                    A[i, row[(ny, nx)]] -= w  # ... = the weighted sum of the neighbours, unknown ...
                else:
                    rhs[i] += w * image[:, ny, nx].double()  # ... or kept
    out = image.double().clone()
    values = torch.linalg.solve(A, rhs)
    for i, (y, x) in enumerate(holes):
        out[:, y, x] = values[i]
    return out


def test_imputation_solves_the_neighbour_average_system():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 7, 9, generator=g)
    masks = torch.rand(2, 7, 9, generator=g) < 0.6
    masks[0, :3, :] = True  # a wide hole along the border
    out = noisy_linear_imputation(images, masks, noise=0)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.equal(out[~masks[:, None].expand_as(images)], images[~masks[:, None].expand_as(images)])
    for i in range(2):
        torch.testing.assert_close(out[i].double(), dense_imputation(images[i], masks[i]), atol=1e-5, rtol=0)
    # (B, 1, H, W) masks too; float64 images are solved in float64
    torch.testing.assert_close(noisy_linear_imputation(images.double(), masks[:, None], noise=0)[1],
                               dense_imputation(images[1], masks[1]), atol=1e-5, rtol=0)
    assert torch.equal(noisy_linear_imputation(images, torch.zeros(2, 7, 9), noise=0), images)  # nothing removed
    assert torch.equal(noisy_linear_imputation(images, torch.ones(2, 7, 9), noise=0), torch.zeros_like(images))


def test_imputation_noise_is_gaussian_on_the_removed_pixels_only():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    masks = (torch.rand(4, 1, 32, 32, generator=g) < 0.5)
    clean = noisy_linear_imputation(images, masks, noise=0)
    noisy = noisy_linear_imputation(images, masks, noise=0.1, generator=torch.Generator().manual_seed(2))
    again = noisy_linear_imputation(images, masks, noise=0.1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(noisy, again)  # seeded
    where = masks.expand_as(images)
    assert torch.equal(noisy[~where], images[~where])
    change = (noisy - clean)[where]
    assert change.numel() > 5000
    assert abs(change.mean().item()) < 4 * 0.1 / change.numel() ** 0.5  # the mean is unchanged
    assert change.std().item() == pytest.approx(0.1, rel=0.05)


def tiny_net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.data *= 4  # confident enough that imputation moves the probabilities
    return net.eval()


def road_case():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 16, 16, generator=g)
    maps = random_maps((3, 16, 16), grid=4, generator=g)
    model = tiny_net()
    with torch.no_grad():
        classes = model(images).argmax(dim=1)
    return model, images, maps, classes


@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")  # theirs, NumPy 2
def test_road_matches_pytorch_grad_cam(monkeypatch):
    pgc_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    pgc_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")

    class Noiseless(pgc_road.NoisyLinearImputer):
        def __init__(self, *args, **kwargs):
            super().__init__(noise=0.0)

    # pytorch-grad-cam's ROAD metrics build NoisyLinearImputer() (noise 0.01) from their module: noiseless
    monkeypatch.setattr(pgc_road, "NoisyLinearImputer", Noiseless)
    model, images, maps, classes = road_case()
    cams = maps.numpy()
    softmax = [pgc_targets.ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    logit = [pgc_targets.ClassifierOutputTarget(int(c)) for c in classes]
    pcts = (20, 40, 60, 80)
    theirs = lambda metric, targets: torch.from_numpy(metric(images, cams, targets, model)).float()  # noqa: E731
    kw = dict(noise=0, batch_size=5)  # batches cut across images and percentiles
    most, least = road(model, images, maps, classes, pcts, "most", **kw), road(model, images, maps, classes, pcts,
                                                                                 "least", **kw)
    assert most.shape == least.shape == (3, 4)
    want_most = torch.stack([theirs(pgc_road.ROADMostRelevantFirst(p), softmax) for p in pcts], dim=1)
    want_least = torch.stack([theirs(pgc_road.ROADLeastRelevantFirst(p), softmax) for p in pcts], dim=1)
    assert want_most.abs().max() > 0.05 and want_least.abs().max() > 0.05  # the comparison has teeth
    torch.testing.assert_close(most, want_most, atol=1e-4, rtol=0)
    torch.testing.assert_close(least, want_least, atol=1e-4, rtol=0)
    torch.testing.assert_close(road_combined(model, images, maps, classes, pcts, **kw),
                               theirs(pgc_road.ROADCombined(list(pcts)), softmax), atol=1e-4, rtol=0)
    torch.testing.assert_close(road(model, images, maps, classes, (30, 70), "least", score="logit", **kw),
                               torch.stack([theirs(pgc_road.ROADLeastRelevantFirst(p), logit) for p in (30, 70)], 1),
                               atol=1e-4, rtol=0)


def test_road_rewards_the_right_map_and_joins_score_explanations():
    images = torch.zeros(2, 3, 8, 8)
    images[:, 0, 2:6, 2:6] = 1.0
    right = torch.zeros(2, 8, 8)
    right[:, 2:6, 2:6] = 1.0
    right += torch.linspace(0, 0.01, 64).view(8, 8)
    classes = torch.zeros(2, dtype=torch.long)
    good = road_combined(Patch(), images, right, classes, noise=0)
    bad = road_combined(Patch(), images, 1 - right, classes, noise=0)
    assert (good > bad + 0.1).all()
    scores = score_explanations(Patch(), images, {"right": right}, classes, deletion_steps=0, road=True,
                                road_noise=0)
    torch.testing.assert_close(scores["road_combined/right"], good)
    torch.testing.assert_close(scores["road_most/right"], road(Patch(), images, right, classes, noise=0).mean(1))
    torch.testing.assert_close(scores["road_combined/right"],
                               (scores["road_least/right"] - scores["road_most/right"]) / 2)
    assert not any(k.startswith("road") for k in score_explanations(Patch(), images, {"right": right}, classes))


def test_road_names_bad_input():
    model, images, maps, classes = road_case()
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\) = \(3, 16, 16\).*got \(3, 8, 8\)"):
        road(model, images, maps[:, :8, :8], classes)
    for bad in [(0, 50), (50, 100), (120,), ()]:
        with pytest.raises(ValueError, match=r"percentiles must be .*got " + re.escape(str(bad))):
            road(model, images, maps, classes, percentiles=bad)
    with pytest.raises(ValueError, match="order must be 'most' or 'least', got 'middle'"):
        road(model, images, maps, classes, order="middle")
    with pytest.raises(ValueError, match="score must be 'probability' or 'logit', got 'prob'"):
        road_combined(model, images, maps, classes, score="prob")
    with pytest.raises(ValueError, match="maps contain NaN"):
        road(model, images, maps * float("nan"), classes)
    with pytest.raises(ValueError, match=r"masks must be \(B, H, W\) = \(3, 16, 16\).*got \(3, 16\)"):
        noisy_linear_imputation(images, maps[:, 0] > 0.5)
    with pytest.raises(ValueError, match="noise=-1 must be >= 0"):
        noisy_linear_imputation(images, maps > 0.5, noise=-1)

def test_colours_come_from_matplotlibs_lookup_table():
    maps = torch.tensor([[[0.0, 0.5, 1.0]]])
    colours = colorize(maps, "viridis")[0, :, 0].T  # (3 pixels, RGB)
    lut = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    expected = torch.tensor(lut[[0, 128, 255]], dtype=torch.float32)
    torch.testing.assert_close(colours, expected)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colorize(maps, "nope")


def test_overlay_blends_on_the_images_device():
    images = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 8, 8)  # coarser than the images: resized
    torch.testing.assert_close(overlay(images, maps, alpha=0.0), images)
    full = overlay(images, maps, colormap="jet", alpha=1.0)
    assert full.shape == (2, 3, 16, 16) and full.device == images.device
    gray = overlay(images[:, :1], maps[:, None])
    assert gray.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"maps of shape \(3, 8, 8\) do not match images"):
        overlay(images, torch.rand(3, 8, 8))


def test_save_grid_writes_a_readable_png(tmp_path):
    images, maps = torch.rand(5, 3, 32, 32), torch.rand(5, 32, 32)
    path = save_grid(tmp_path / "sub" / "grid.png", images, maps, true_names=["a", "b", "c", "d", "e"],
                     pred_names=["a", "x", "c", "d", "y"], scores=[0.9, 0.5, 0.8, 0.7, 0.6], ncol=3, title="t")
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
    assert np.asarray(Image.open(path).convert("RGB")).std() > 10  # not a blank canvas
