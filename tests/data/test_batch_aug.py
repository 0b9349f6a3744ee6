"""sportsnet.data.batch_aug: the per-image transforms, applied to a whole uint8 batch on its device."""
import weakref

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from sportsnet.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from sportsnet.data.batch_aug import BatchRandomResizedCrop, BatchResizeCenterCrop, collate_channels_last, crop_boxes
from sportsnet.data.transforms import grayscale_stats


def images(n=6, h=40, w=52, seed=0, channels_last=False):
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def per_image(x, top, left, h, w, flip, size, grayscale=False):
    """What the per-image v2 pipeline (build_transforms(True)) does for this crop and flip."""
    y = F.resized_crop(x, top, left, h, w, [size, size], antialias=True)
    y = F.to_dtype(F.horizontal_flip(y) if flip else y, torch.float32, scale=True)
    mean, std = grayscale_stats(IMAGENET_MEAN, IMAGENET_STD) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    return F.normalize(F.rgb_to_grayscale(y) if grayscale else y, list(mean), list(std))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grayscale", [False, True])
def test_given_the_draws_the_batch_equals_the_per_image_pipeline_to_the_bit(channels_last, grayscale):
    x = images(channels_last=channels_last)
    aug = BatchRandomResizedCrop(24, grayscale=grayscale)
    boxes, flips = aug.draw(len(x), 40, 52, torch.Generator().manual_seed(1))
    flips[:2] = torch.tensor([True, False])  # both kinds, whatever the draw
    out = aug.apply(x, boxes, flips)
    assert out.shape == (6, 1 if grayscale else 3, 24, 24) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last and not grayscale
                             else torch.contiguous_format)
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes.tolist(), flips.tolist())):
        assert torch.equal(out[i], per_image(x[i], top, left, h, w, flip, 24, grayscale)), i


def test_calling_draws_then_applies_and_the_generator_decides():
    x = images()
    aug = BatchRandomResizedCrop(16)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug.apply(x, *aug.draw(6, 40, 52, torch.Generator().manual_seed(3))))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    torch.manual_seed(5)  # default: the global generator (what checkpoints save and restore)
    b = aug(x)
    torch.manual_seed(5)
    assert torch.equal(b, aug(x))


@pytest.mark.parametrize("grayscale", [False, True])
def test_eval_batch_equals_the_per_image_eval_pipeline(grayscale):
    x = images(channels_last=True)
    ours = BatchResizeCenterCrop(24, grayscale=grayscale)(x)
    theirs = build_transforms(False, 24, grayscale=grayscale)
    for i in range(len(x)):
        assert torch.equal(ours[i], theirs(x[i].contiguous())), i


def test_crops_and_flips_follow_torchvisions_distribution():
    n, (height, width) = 20000, (180, 240)
    boxes, flips = BatchRandomResizedCrop(224).draw(n, height, width, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
                           for _ in range(n)], dtype=torch.float64)  # (top, left, h, w)
    ours = boxes.double()
    top, left, h, w = ours.unbind(1)
    assert boxes.dtype == torch.int64 and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all() and (h > 0).all() and (w > 0).all()
    for a, b in ((w * h, theirs[:, 2] * theirs[:, 3]), (w / h, theirs[:, 3] / theirs[:, 2]), (top, theirs[:, 0]),
                 (left, theirs[:, 1])):
        assert a.mean().item() == pytest.approx(b.mean().item(), rel=0.02)
        assert a.std().item() == pytest.approx(b.std().item(), rel=0.04)
    assert flips.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert not BatchRandomResizedCrop(8, hflip=0.0).draw(100, 8, 8)[1].any()
    assert BatchRandomResizedCrop(8, hflip=1.0).draw(100, 8, 8)[1].all()


def test_no_fitting_try_falls_back_to_torchvisions_centre_crop():
    # A 1x100 strip: no crop of ratio in [3/4, 4/3] fits, so the centre crop of the clamped ratio.
    boxes = crop_boxes(5, 1, 100, generator=torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0, 49, 1, 1]] * 5
    torch.manual_seed(0)
    assert list(T.RandomResizedCrop.get_params(torch.empty(3, 1, 100), [0.08, 1.0], [3 / 4, 4 / 3])) == [0, 49, 1, 1]


def test_channels_last_collation_in_workers_keeps_pixels_and_layout():
    x = images(8, 12, 10)
    items = [(x[i].permute(1, 2, 0).contiguous().permute(2, 0, 1), i % 3) for i in range(8)]  # CL views, as the cache's
    for workers in (0, 2):
        batches = list(DataLoader(items, batch_size=4, num_workers=workers, collate_fn=collate_channels_last))
        got = torch.cat([b for b, _ in batches])
        assert torch.equal(got, x) and batches[0][0].is_contiguous(memory_format=torch.channels_last)
        assert torch.cat([t for _, t in batches]).tolist() == [i % 3 for i in range(8)]


def test_bad_batches_and_arguments_are_named():
    aug = build_transforms(True, 8, batched=True)
    with pytest.raises(ValueError,
                       match=r"uint8 \(B, 3, H, W\) batch with B >= 1, got torch.uint8 of shape \(3, 8, 8\)"):
        aug(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got torch.float32 of shape \(2, 3, 8, 8\)"):
        build_transforms(False, 8, batched=True)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"B >= 1, got torch.uint8 of shape \(0, 3, 8, 8\)"):
        build_transforms(True, 8, batched=True)(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"scale=\(0.5, 0.1\)"):
        BatchRandomResizedCrop(8, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="size=0"):
        BatchResizeCenterCrop(0)
    with pytest.raises(ValueError, match=r"resize_ratio=0.5 must be >= 1"):
        build_transforms(False, 8, batched=True, resize_ratio=0.5)


@pytest.mark.skipif(not hasattr(torch.Tensor, "_use_count") or not hasattr(torch._C, "_storage_Use_Count"),
                    reason="this torch lacks the reference counters: batches are never reused there")
@pytest.mark.parametrize("make", [lambda: BatchRandomResizedCrop(16), lambda: BatchResizeCenterCrop(16)])
def test_only_a_recycled_unused_batch_is_written_over(make):
    x = images(4, 32, 32, channels_last=True)
    aug = make()
    first = aug(x)
    kept = first.clone()
    second = aug(x)  # not recycled: never written over, even if dropped
    assert second.data_ptr() != first.data_ptr() and torch.equal(first, kept)
    aug.recycle(second)
    ref, ptr = weakref.ref(second), second.data_ptr()
    del second
    third = aug(x)
    assert third is ref() and third.data_ptr() == ptr  # recycled: reused
    aug.recycle(third)
    view = third[1:]
    kept = view.clone()
    assert aug(x).data_ptr() != ptr and torch.equal(view, kept)  # recycled, but a view of it is alive
    del view
    batch = aug(x)
    y = torch.nn.Conv2d(3, 2, 3)(batch).sum()
    aug.recycle(batch)
    kept = batch.clone()
    assert aug(x).data_ptr() != batch.data_ptr() and torch.equal(batch, kept)  # autograd holds it
    y.backward()


def test_the_loops_recycle_their_batches():
    from sportsnet.engine.loop import evaluate, train_one_epoch

    class Counting(BatchResizeCenterCrop):
        last, reused = None, 0

        def __call__(self, images):
            out = super().__call__(images)
            self.reused += out is self.last  # the very tensor handed out before
            self.last = out
            return out

    x = images(24, 20, 20, channels_last=True)
    loader = [(x[i:i + 4], torch.arange(4) % 2) for i in range(0, 24, 4)]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for run in (lambda t: train_one_epoch(model, loader, opt, torch.nn.functional.cross_entropy,
                                          device=torch.device("cpu"), progress=False, batch_transform=t),
                lambda t: evaluate(model, loader, device=torch.device("cpu"), num_classes=2, progress=False,
                                   batch_transform=t)):
        t = Counting(16)
        run(t)
        counters = hasattr(torch.Tensor, "_use_count") and hasattr(torch._C, "_storage_Use_Count")
        assert t.reused == (5 if counters else 0)  # six batches, one buffer
