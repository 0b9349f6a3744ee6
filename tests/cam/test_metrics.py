"""sportsnet.cam.metrics and sportsnet.cam.overlay on constructed maps and a toy model."""
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
    pointing_game,
    random_maps,
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
