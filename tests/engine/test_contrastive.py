"""sportsnet.engine.contrastive: the loss, exact accumulation, the 2-process gather, retrieval metrics."""
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from sportsnet.engine.contrastive import (
    ContrastiveStep,
    average_gradients,
    clip_loss,
    contrastive_backward,
    gather_features,
    retrieval_metrics,
)
from sportsnet.engine.loop import run_epoch
from sportsnet.models.clip import load_clip
from tests.support import clip_tiny

clip_tiny.register()


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@clip_tiny.needs_open_clip
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_loss_equals_open_clips_clip_loss(scale):
    from open_clip.loss import ClipLoss

    img, txt = unit(12, 16, 0), unit(12, 16, 1)
    torch.testing.assert_close(clip_loss(img, txt, scale), ClipLoss()(img, txt, scale))
    matched = clip_loss(img, img, scale)  # perfect pairs: lower loss than random ones
    assert matched < clip_loss(img, txt, scale)
    # bf16 features are scored in float32.
    torch.testing.assert_close(clip_loss(img.bfloat16(), txt.bfloat16(), scale),
                               ClipLoss()(img.bfloat16().float(), txt.bfloat16().float(), scale))
    with pytest.raises(ValueError, match=r"\(12, 16\) and text_features \(11, 16\)"):
        clip_loss(img, txt[:11], scale)


def tiny_batch(n=8, seed=0):
    torch.manual_seed(seed)
    bundle = load_clip("tiny-vit-test", "none")
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    tokens = bundle.tokenizer([f"a photo of thing number {i}" for i in range(n)])
    return bundle, x, tokens


def grads_of(model, micro_batches, **kw):
    model.zero_grad(set_to_none=True)
    loss = contrastive_backward(model, micro_batches, **kw)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b, rtol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * float(a[k].abs().max()) + 1e-8, msg=k)


@clip_tiny.needs_open_clip
def test_accumulated_gradients_equal_one_big_batch():
    bundle, x, tokens = tiny_batch()
    model = bundle.model.train()
    loss1, g1 = grads_of(model, [(x, tokens)])
    loss4, g4 = grads_of(model, [(x[i:i + 2], tokens[i:i + 2]) for i in range(0, 8, 2)])
    torch.testing.assert_close(loss4, loss1)
    assert_same_grads(g1, g4)
    assert float(g1["logit_scale"].abs()) > 0  # the temperature learns, and is counted once
    # Summing per-micro-batch losses (the naive way) is a different objective: fewer negatives.
    model.zero_grad(set_to_none=True)
    for i in range(0, 8, 2):
        contrastive_backward(model, [(x[i:i + 2], tokens[i:i + 2])])
    assert not torch.allclose(model.logit_scale.grad, g1["logit_scale"], rtol=1e-2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from tests.support import clip_tiny as ct

    ct.register()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        half = slice(rank * 4, rank * 4 + 4)
        # 1. The gathered loss is the loss of the concatenated batch; feature gradients come back.
        img, txt = unit(8, 16, 0)[half].requires_grad_(), unit(8, 16, 1)[half].requires_grad_()
        loss = clip_loss(*gather_features(img, txt), 20.0)
        loss.backward()
        # 2. A training step's gradients (2 micro-batches per rank, averaged over ranks).
        bundle, x, tokens = tiny_batch()
        model = bundle.model.train()
        model.zero_grad(set_to_none=True)
        step_loss = contrastive_backward(model, [(x[half][:2], tokens[half][:2]), (x[half][2:], tokens[half][2:])])
        average_gradients([p for p in model.parameters()])
        torch.save({"loss": loss.detach(), "img_grad": img.grad, "txt_grad": txt.grad, "step_loss": step_loss,
                    "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@clip_tiny.needs_open_clip
def test_two_processes_see_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    img, txt = unit(8, 16, 0).requires_grad_(), unit(8, 16, 1).requires_grad_()
    full = clip_loss(img, txt, 20.0)
    full.backward()
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["loss"], full.detach())
        # Every rank's loss is the global one, so each rank's features collect 2x its gradient.
        torch.testing.assert_close(got["img_grad"] / 2, img.grad[r * 4:r * 4 + 4])
        torch.testing.assert_close(got["txt_grad"] / 2, txt.grad[r * 4:r * 4 + 4])
    bundle, x, tokens = tiny_batch()
    loss1, g1 = grads_of(bundle.model.train(), [(x, tokens)])
    for got in ranks:
        torch.testing.assert_close(got["step_loss"], loss1)
        assert_same_grads(g1, got["grads"])


def test_retrieval_metrics_count_any_caption_of_an_image():
    # 3 images with 2 captions each; features on the unit circle so the rankings are known.
    angle = lambda a: torch.tensor([[torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))]])  # noqa: E731
    images = torch.cat([angle(0.0), angle(1.0), angle(2.0)])
    texts = torch.cat([angle(0.05), angle(1.9),     # image 0's captions: one near it, one near image 2
                       angle(1.05), angle(0.9),     # image 1's: both near it
                       angle(2.5), angle(0.4)])     # image 2's: one near it, one nearest image 0
    text_image = torch.tensor([0, 0, 1, 1, 2, 2])
    m = retrieval_metrics(images, texts, text_image, ks=(1, 2, 3))
    # i2t@1: image 0 -> text 0 (hit), image 1 -> text 2 (hit), image 2 -> text 1 (image 0's): 2/3.
    assert m["i2t_R@1"] == pytest.approx(2 / 3)
    # t2i@1: texts 0,2,3 hit; text 1 -> image 2 (miss), text 4 -> image 2 (hit), text 5 -> image 0 (miss).
    assert m["t2i_R@1"] == pytest.approx(4 / 6)
    # @2: image 2 now finds text 4 too; texts 1 and 5 still miss (their image is third).
    assert m["i2t_R@2"] == pytest.approx(1.0) and m["t2i_R@2"] == pytest.approx(4 / 6)
    assert m["t2i_R@3"] == m["i2t_R@3"] == 1.0
    with pytest.raises(ValueError, match=r"text_image must be \(6,\) image indices in \[0, 3\)"):
        retrieval_metrics(images, texts, torch.tensor([0, 0, 1, 1, 2, 3]))


@clip_tiny.needs_open_clip
def test_training_steps_lower_the_loss_and_clamp_the_temperature():
    bundle, x, tokens = tiny_batch(16)
    model = bundle.model
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)  # the learnable temperature's start
    with torch.no_grad():
        model.logit_scale.fill_(5.0)  # above log(100): clamped after the first step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = [(x[i:i + 8], tokens[i:i + 8]) for i in range(0, 16, 8)] * 5  # a step's batch: 2 micro-batches of 4
    first = run_epoch(model, loader, opt, ContrastiveStep(accum_steps=2), device=torch.device("cpu"), progress=False,
                      log_every=1)
    assert first.steps == 10 and first.images == 80 and len(first.logs) == 10
    assert model.logit_scale.item() <= torch.log(torch.tensor(100.0)) + 1e-6
    assert first.logs[-1].loss < first.logs[0].loss
    assert first.logs[-1].metrics["temperature"] == pytest.approx(0.01, abs=2e-3)  # 1 / 100 after the clamp
    with pytest.raises(ValueError, match="a batch of 8 pairs does not split into accum_steps=3"):
        run_epoch(model, loader[:1], opt, ContrastiveStep(accum_steps=3), device=torch.device("cpu"), progress=False)


@clip_tiny.needs_open_clip
def test_a_step_with_accumulation_equals_contrastive_backward_over_its_micro_batches():
    """ContrastiveStep splits the loader's batch into micro-batches and accumulates exactly."""
    bundle, x, tokens = tiny_batch(8)
    model = bundle.model.train()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model.zero_grad(set_to_none=True)
    out = ContrastiveStep(accum_steps=4)(model, (x, tokens), device=torch.device("cpu"), precision="fp32",
                                         scaler=scaler)
    stepped = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    loss, whole = grads_of(model, [(x, tokens)])
    assert out["seen"] == 8 and float(out["loss"]) / 8 == pytest.approx(float(loss), rel=1e-5)
    assert_same_grads(whole, stepped)
