"""sportsnet.data.cache.DecodedImages: the same augmented images as the plain path, rebuilt when files change."""
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from sportsnet.data import Sports100, build_transforms, make_synthetic_sports
from sportsnet.data.cache import DecodedImages
from tests.support.trees import write_image


@pytest.fixture
def root(tmp_path):
    return make_synthetic_sports(tmp_path / "syn", num_classes=3, train_per_class=8, eval_per_class=2, size=48)


def test_cached_items_are_the_plain_paths_draw_for_draw(root, tmp_path):
    plain = Sports100(root, "train", transform=build_transforms(True, 32))
    cached = DecodedImages(Sports100(root, "train", transform=build_transforms(True, 32)), tmp_path / "cache")
    assert len(cached) == len(plain) == 24 and cached.classes == plain.classes
    for i in (0, 5, 23):
        torch.manual_seed(i)
        a, ya = plain[i]
        torch.manual_seed(i)
        b, yb = cached[i]
        assert ya == yb and torch.equal(a, b)  # same decoded pixels, same random crop and flip
    raw = DecodedImages(Sports100(root, "train"), tmp_path / "cache").pixels(3)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 48, 48)


def test_workers_share_the_map_and_an_epoch_matches_the_plain_loader(root, tmp_path):
    tf = build_transforms(False, 32)
    plain = DataLoader(Sports100(root, "valid", transform=tf), batch_size=4)
    cached = DataLoader(DecodedImages(Sports100(root, "valid", transform=tf), tmp_path / "c"), batch_size=4,
                        num_workers=2)
    for (a, ya), (b, yb) in zip(plain, cached, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_changed_files_build_a_new_cache_and_mixed_sizes_are_refused(root, tmp_path):
    first = DecodedImages(Sports100(root, "test"), tmp_path / "c")
    again = DecodedImages(Sports100(root, "test"), tmp_path / "c")
    assert again.data_path == first.data_path  # reused, not rebuilt
    stamp = first.data_path.stat().st_mtime_ns
    victim = Path(Sports100(root, "test").samples[0][0])
    write_image(victim, (10, 200, 10), size=(48, 48), fmt="JPEG")
    changed = DecodedImages(Sports100(root, "test"), tmp_path / "c")
    assert changed.data_path != first.data_path and first.data_path.stat().st_mtime_ns == stamp
    assert changed.pixels(0)[1].float().mean() > 150  # the new green image, not the old pixels
    write_image(victim, (10, 200, 10), size=(60, 40), fmt="JPEG")
    with pytest.raises(ValueError, match=r"needs images of one size; found \{'48x48': 5, '60x40': 1\}"):
        DecodedImages(Sports100(root, "test"), tmp_path / "c")
    assert not [p for p in os.listdir(tmp_path / "c") if p.endswith(".tmp")]  # nothing half-written left
