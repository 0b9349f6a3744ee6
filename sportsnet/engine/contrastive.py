"""Contrastive image-text training: the symmetric InfoNCE loss, features gathered across ranks, the
training step with exact gradient accumulation (:class:`ContrastiveStep`, run by ``fit`` like any other
step), and retrieval metrics.

Works on any model with ``encode_image(x, normalize=True)``, ``encode_text(tokens, normalize=True)``
and a ``logit_scale`` parameter holding log(temperature^-1) (open_clip's ``CLIP``).

Gradient accumulation is exact: a contrastive loss does not split over micro-batches (every image is
contrasted with every caption of the step), so summing per-micro-batch losses would train with fewer
negatives. Instead the step first encodes all micro-batches without gradients, then re-encodes one
micro-batch at a time with gradients, splicing its fresh features into the cached ones, so each
backward is the gradient of the full-step loss with respect to that micro-batch. The summed gradients
equal those of one big batch (tested). Across processes, features are all-gathered with autograd and
gradients are averaged over ranks, which again gives the global batch's gradient.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..hardware import autocast
from .distributed import world

MAX_LOGIT_SCALE = math.log(100.0)  # the temperature starts at 0.07 (open_clip's init) and stays >= 0.01


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE over ``(N, D)`` normalised features; pair i is ``(image i, text i)``.

    ``logit_scale`` is the multiplier itself (e.g. 100.0, already exponentiated), as in open_clip's
    ``ClipLoss``. Computed in float32 whatever the features' dtype.
    """
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"image_features {tuple(image_features.shape)} and text_features "
                         f"{tuple(text_features.shape)} must both be (N, D) with the same N and D")
    logits = logit_scale * image_features.float() @ text_features.float().T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class _GatherWithGrad(torch.autograd.Function):
    """``(n, D)`` per rank -> ``(world * n, D)`` in rank order; the backward sums every rank's gradient
    of the gathered tensor and hands each rank its own rows (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = torch.empty(ctx.n, *grad.shape[1:], dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad)
            return out
        total = grad.clone()  # gloo: no reduce-scatter on every version; all-reduce and slice
        dist.all_reduce(total)
        return total[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' features concatenated in rank order, with autograd: the backward sends each rank the
    gradients that every rank's loss puts on its features. The identity in a single process. Every
    rank must pass the same number of rows."""
    _, size = world()
    if size == 1:
        return image_features, text_features
    both = torch.cat([image_features, text_features], dim=1)  # one collective for both towers
    gathered = _GatherWithGrad.apply(both)
    d = image_features.shape[1]
    return gathered[:, :d], gathered[:, d:]


def encode_pair(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Mean of each gradient over ranks, in one flattened all-reduce (what DDP would do)."""
    _, size = world()
    grads = [p.grad for p in params if p.grad is not None]
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def contrastive_backward(model: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                         precision: str = "fp32", scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of :func:`clip_loss` over the concatenation of
    ``micro_batches`` (``(images, tokens)`` on the model's device) and, in a process group, over all
    ranks' batches. Returns the (detached) loss. Does not step or average across ranks."""
    device = micro_batches[0][0].device
    scale_param = model.logit_scale
    if len(micro_batches) == 1:
        images, tokens = micro_batches[0]
        with autocast(device, precision):
            img, txt = encode_pair(model, images, tokens)
        loss = clip_loss(*gather_features(img, txt), scale_param.exp())
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss.detach()
    with torch.no_grad(), autocast(device, precision):
        cached = [encode_pair(model, images, tokens) for images, tokens in micro_batches]
    loss_out = None
    for j, (images, tokens) in enumerate(micro_batches):
        with autocast(device, precision):
            img, txt = encode_pair(model, images, tokens)
        all_img = torch.cat([img if i == j else c[0].to(img.dtype) for i, c in enumerate(cached)])
        all_txt = torch.cat([txt if i == j else c[1].to(txt.dtype) for i, c in enumerate(cached)])
        # The temperature appears in every pass; its gradient is taken from the first only.
        logit_scale = scale_param.exp() if j == 0 else scale_param.exp().detach()
        loss = clip_loss(*gather_features(all_img, all_txt), logit_scale)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if j == 0:
            loss_out = loss.detach()
    return loss_out


class ContrastiveStep:
    """One contrastive optimizer step, as a :class:`~sportsnet.engine.loop.TrainStep` for ``run_epoch``
    and ``fit``: the loader's batch of ``(images, tokens)`` is the whole step (per process); it is
    split into ``accum_steps`` micro-batches for :func:`contrastive_backward` (exact accumulation),
    and the gradients are averaged over ranks here (not by DDP: ``ddp = False``). After the optimizer
    step the logit scale is clamped to [0, log 100]. Reports ``loss`` and ``temperature``.
    """

    ddp = False

    def __init__(self, accum_steps: int = 1):
        if accum_steps < 1:
            raise ValueError(f"accum_steps={accum_steps!r} must be >= 1")
        self.accum_steps = accum_steps

    def __call__(self, model: nn.Module, batch, *, device: torch.device, precision: str,
                 scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor | int]:
        images, tokens = batch
        n = images.shape[0]
        if n % self.accum_steps:
            raise ValueError(f"a batch of {n} pairs does not split into accum_steps={self.accum_steps} "
                             f"equal micro-batches")
        micro = n // self.accum_steps
        group = [(images[i:i + micro].to(device, non_blocking=True), tokens[i:i + micro].to(device, non_blocking=True))
                 for i in range(0, n, micro)]
        loss = contrastive_backward(model, group, precision=precision, scaler=scaler)
        average_gradients([p for p in model.parameters() if p.requires_grad])
        temperature = model.logit_scale.detach().float().exp().reciprocal()
        return {"loss": loss.float() * n, "temperature": temperature * n, "seen": n}

    @staticmethod
    def after_step(model: nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image->text and text->image Recall@k over normalised features.

    ``text_image[t]`` is the index of the image caption ``t`` describes; an image retrieves correctly
    at k when any of its captions is among its k nearest texts (Flickr8k has five per image).
    """
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    if text_image.shape != (n_txt,) or (n_txt and (int(text_image.min()) < 0 or int(text_image.max()) >= n_img)):
        raise ValueError(f"text_image must be ({n_txt},) image indices in [0, {n_img}), got shape "
                         f"{tuple(text_image.shape)}")
    sim = image_features.float() @ text_features.float().T  # (I, T)
    out = {}
    for k in ks:
        kt, ki = min(k, n_txt), min(k, n_img)
        top_t = sim.topk(kt, dim=1).indices  # (I, k) texts per image
        i2t = (text_image[top_t] == torch.arange(n_img, device=sim.device)[:, None]).any(dim=1)
        top_i = sim.T.topk(ki, dim=1).indices  # (T, k) images per text
        t2i = (top_i == text_image[:, None]).any(dim=1)
        out[f"i2t_R@{k}"] = i2t.float().mean().item()
        out[f"t2i_R@{k}"] = t2i.float().mean().item()
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def encode_retrieval_set(model: nn.Module, images: Iterable[torch.Tensor], captions: Sequence[Sequence[str]],
                         tokenizer, *, device: torch.device, precision: str = "fp32",
                         text_batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image features, text features, text_image)`` of a held-out set: ``images`` yields batches
    in the order of ``captions`` (all captions of each image)."""
    model.eval()
    feats = []
    for x in images:
        with autocast(device, precision):
            feats.append(model.encode_image(x.to(device, non_blocking=True), normalize=True).float())
    texts = [c for caps in captions for c in caps]
    text_image = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], device=device)
    tfeats = []
    for s in range(0, len(texts), text_batch):
        with autocast(device, precision):
            tfeats.append(model.encode_text(tokenizer(texts[s:s + text_batch]).to(device), normalize=True).float())
    img = torch.cat(feats) if feats else torch.empty(0, device=device)
    if img.shape[0] != len(captions):
        raise ValueError(f"{img.shape[0]} images were encoded but there are captions for {len(captions)}")
    return img, torch.cat(tfeats), text_image
