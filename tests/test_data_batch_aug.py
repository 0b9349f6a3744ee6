"""sportsnet.data.batch_aug.BatchRandomResizedCrop: torchvision's crop distribution, batched."""
import pytest
import torch
from torchvision import transforms as T

from sportsnet.data import IMAGENET_MEAN, IMAGENET_STD
from sportsnet.data.batch_aug import BatchRandomResizedCrop


def normalised(x):
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - m) / s


def test_the_whole_image_unflipped_is_just_normalised_and_a_flip_mirrors_it():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    keep = BatchRandomResizedCrop(32, scale=(1, 1), ratio=(1, 1), hflip=0.0)
    torch.testing.assert_close(keep(x), normalised(x), atol=1e-4, rtol=0)
    flip = BatchRandomResizedCrop(32, scale=(1, 1), ratio=(1, 1), hflip=1.0)
    torch.testing.assert_close(flip(x), normalised(x).flip(-1), atol=1e-4, rtol=0)


def test_crops_follow_torchvisions_distribution():
    n, (height, width) = 20000, (180, 240)
    ours = BatchRandomResizedCrop(224).boxes(n, height, width, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
                           for _ in range(n)], dtype=torch.float64)  # (top, left, h, w)
    w, h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    assert (ours[:, 0] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 1] >= 0).all() and (ours[:, 3] <= height).all()
    assert (w == w.round()).all() and (w > 0).all() and (h > 0).all()
    for a, b in ((w * h / (height * width), theirs[:, 2] * theirs[:, 3] / (height * width)),
                 (w / h, theirs[:, 3] / theirs[:, 2]), (ours[:, 0], theirs[:, 1]), (ours[:, 1], theirs[:, 0])):
        assert a.mean().item() == pytest.approx(b.mean().item(), rel=0.02)
        assert a.std().item() == pytest.approx(b.std().item(), rel=0.04)


def test_shrinking_averages_instead_of_aliasing():
    # A 1-pixel checkerboard shrunk 8x must come out flat grey (an aliased resample would not).
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 255).to(torch.uint8)
    x = board.expand(1, 3, 64, 64).contiguous()
    out = BatchRandomResizedCrop(8, scale=(1, 1), ratio=(1, 1), hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1))(x)
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out, torch.full_like(out, 0.5), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\)"):
        BatchRandomResizedCrop(8)(x[0])
