import pytest
import torch
from PIL import Image

from sportsnet.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms, denormalize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_eval_resizes_shorter_side_then_centre_crops():
    img = Image.new("RGB", (100, 50), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 50))  # a white strip on the left edge, outside the crop
    x = build_transforms(train=False, size=28)(img)
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32
    black = (torch.zeros(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x.mean(dim=(1, 2)), black, atol=1e-4, rtol=0)


def test_train_is_random_and_shape_stable():
    img = Image.effect_noise((64, 48), 60).convert("RGB")
    t = build_transforms(train=True, size=32)
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    torch.manual_seed(0)
    assert torch.equal(a, t(img))


def test_model_statistics_are_used_and_invertible():
    img = Image.new("RGB", (40, 40), (120, 30, 200))
    x = build_transforms(train=False, size=16, mean=CLIP_MEAN, std=CLIP_STD)(img)
    expected = (torch.tensor([120, 30, 200]) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[:, 8, 8], expected.float(), atol=1e-5, rtol=0)
    back = denormalize(x[None], CLIP_MEAN, CLIP_STD)[0]
    torch.testing.assert_close(back[:, 8, 8] * 255, torch.tensor([120.0, 30.0, 200.0]), atol=1e-3, rtol=0)


def test_grayscale_mode_gives_one_channel_with_averaged_statistics():
    img = Image.new("RGB", (40, 40), (100, 100, 100))
    x = build_transforms(train=False, size=16, grayscale=True)(img)
    assert x.shape == (1, 16, 16)
    m, s = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    # luma weights sum to 0.9999; uint8 truncation (a bug) would be off by 0.017
    torch.testing.assert_close(x[0, 0, 0].item(), (100 / 255 - m) / s, atol=1e-3, rtol=0)
    torch.testing.assert_close(denormalize(x[None])[0, 0, 0, 0].item(), 100 / 255, atol=1e-4, rtol=0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="size=0"):
        build_transforms(train=False, size=0)
    with pytest.raises(ValueError, match="need 3"):
        build_transforms(train=False, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="std=.* must be positive"):
        build_transforms(train=False, std=(0.2, 0.0, 0.2))


def test_eval_box_follows_the_resize_and_centre_crop():
    from sportsnet.data.transforms import eval_box

    # 200x100 (w, h) -> shorter side 50 -> 100x50, centre crop 50: 25 px cut on the left.
    assert eval_box((50, 0, 150, 100), (200, 100), size=50, resize=50) == [0.0, 0.0, 50.0, 50.0]
    assert eval_box((0, 10, 40, 30), (200, 100), size=50, resize=50) == [0.0, 5.0, 0.0, 15.0]  # clipped: cut off
    # Portrait 100x300, resize 60 -> 60x180, crop 50: 5 px cut left, 65 px from the top.
    assert eval_box((10, 150, 90, 160), (100, 300), size=50, resize=60) == pytest.approx([1.0, 25.0, 49.0, 31.0])
