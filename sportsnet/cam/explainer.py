"""Batched CAM explanations for any classifier returning ``(B, C)`` logits: the shared call
(:class:`CamExplainer`) and the gradient-weighted family (:class:`GradCAM`).

    with GradCAM(model, target_layer="features.35", method="gradcam") as cam:
        out = cam(images)                    # the predicted class
        out = cam(images, targets=labels)    # one class, (B,) or (B, K) classes
        out = cam(images, top_k=3)           # the 3 best classes, one forward pass
    out.maps     # (B, K, H, W) float32 in [0, 1] on the images' device
    out.classes  # (B, K) class indices; out.scores (B, K) softmax probabilities

Every explainer (this module's, and the gradient-free ones beside it: Score-CAM, Ablation-CAM,
Eigen-CAM, ...) is called the same way. One call puts the model in eval mode with every parameter
frozen, runs one forward with hooks on the target layers, picks the classes, and hands the captured
activations to the method; hooks live only for the duration of the call, and the model's mode and
``requires_grad`` flags are restored afterwards, also after an exception.

Grad-CAM family: a forward hook replaces the target layer's output with a detached leaf that requires
grad. So the forward records no graph before that layer, and ``torch.autograd.grad`` takes each
target's gradient with respect to that activation alone: no full backward, no parameter ``.grad``. K
targets share one forward (one small backward each through the layers after the hook), and the maps
come from :func:`sportsnet.ops.fused_gradcam` on the activations' device.

Between calls an explainer holds no hooks, only references to the model and its target layers.
Leaving the ``with`` block (or :meth:`CamExplainer.close`) drops them, so the explainer no longer keeps
the model alive (a large model on a GPU can be freed), and a later call is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..ops import METHODS, fused_gradcam, fused_weighted_cam
from ..ops.reference import channel_terms
from .hooks import ActivationCapture, ModelState, as_maps, default_target_layer, resolve_layer
from .projection import principal_projection

#: aug_smooth's test-time augmentations: (flip horizontally, scale), the identity first.
AUGMENTATIONS = [(False, 1.0), (False, 0.9), (False, 1.1), (True, 1.0), (True, 0.9), (True, 1.1)]


@dataclass
class CamOutput:
    maps: torch.Tensor  # (B, K, H, W) float32 in [0, 1]
    classes: torch.Tensor  # (B, K) int64
    scores: torch.Tensor  # (B, K) softmax probability of each class
    logits: torch.Tensor  # (B, C) detached


def _nearest_attribute(model: nn.Module, layer_name: str, attribute: str, kind: type):
    """``attribute`` of the nearest ancestor of the layer that has one of type ``kind`` (open_clip
    transformers have ``batch_first``, timm ViTs ``num_prefix_tokens``)."""
    parts = layer_name.split(".")
    modules = dict(model.named_modules())
    for i in range(len(parts), -1, -1):
        value = getattr(modules.get(".".join(parts[:i]), None), attribute, None)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    return None


class CamExplainer:
    """The shared call of every CAM method. Subclasses set :attr:`needs_gradients` and implement
    :meth:`_maps`.

    Args:
        model: maps ``(B, 3, H, W)`` images to ``(B, C)`` logits.
        target_layer: a module, a dotted name, or a list of them (maps per layer are normalised, then
            averaged); default: the family's usual layer (see :func:`default_target_layer`).
        size: ``(H, W)`` of the maps; default: the images' size.
    """

    #: Whether the forward records a graph from the target layers (gradient-based methods), or runs
    #: under ``torch.inference_mode`` (gradient-free ones).
    needs_gradients = True
    #: The method's name, as ``explain.py --method`` spells it.
    name = ""

    def __init__(self, model: nn.Module, target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
                 size: tuple[int, int] | None = None):
        self.model, self.size = model, size
        if target_layer is None:
            target_layer = default_target_layer(model)
        layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
        if not layers:
            raise ValueError("target_layer is an empty list")
        self.layers = [resolve_layer(model, layer) for layer in layers]
        self._names = [n for n, _ in self.layers]
        # How token sequences are laid out: known from the model where it says so, guessed otherwise.
        self.token_layout = {name: dict(batch_first=_nearest_attribute(model, name, "batch_first", bool),
                                        prefix_tokens=_nearest_attribute(model, name, "num_prefix_tokens", int))
                             for name in self._names}
        self.closed = False

    def close(self) -> None:
        """Drop the references to the model and its target layers; later calls raise. Calling it again
        does nothing. (No hooks outlive a call, so there are none to remove here.)"""
        self.model = None  # type: ignore[assignment]
        self.layers = []
        self.closed = True

    def __enter__(self):
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} is closed; make a new one to explain again")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def target_layers(self) -> list[str]:
        """The dotted names of the target layers."""
        return list(self._names)

    def _targets(self, logits: torch.Tensor, targets, top_k: int | None) -> torch.Tensor:
        B, C = logits.shape
        if targets is not None and top_k is not None:
            raise ValueError("pass targets or top_k, not both")
        if targets is None:
            k = 1 if top_k is None else top_k
            if not isinstance(k, int) or not 1 <= k <= C:
                raise ValueError(f"top_k={top_k!r} must be an integer in [1, {C}] (the number of classes)")
            return logits.topk(k, dim=1).indices
        t = torch.as_tensor(targets, device=logits.device).long()
        if t.dim() == 0:  # one class for every image
            t = t.expand(B)
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2 or t.shape[0] != B:
            raise ValueError(f"targets of shape {tuple(torch.as_tensor(targets).shape)} do not match the batch of "
                             f"{B} images; expected an index, (B,) or (B, K)")
        bad = (t < 0) | (t >= C)
        if bad.any():  # one host sync, only for user-given targets
            raise ValueError(f"class index {int(t[bad][0])} is out of range for a model with {C} classes")
        return t

    def __call__(self, images: torch.Tensor, targets=None, top_k: int | None = None, *,
                 aug_smooth: bool = False) -> CamOutput:
        """Maps for ``targets`` (or the ``top_k`` best classes, or the predicted one). ``aug_smooth``:
        test-time augmentation, as pytorch-grad-cam's: the maps of the image flipped horizontally or not
        and scaled by 0.9, 1 and 1.1 (six calls, the classes fixed by the first), each mapped back into
        place (flipped back) and averaged."""
        out = self._explain(images, targets, top_k)
        if not aug_smooth:
            return out
        total = out.maps.clone()
        for flip, factor in AUGMENTATIONS[1:]:
            x = images.flip(-1) if flip else images
            maps = self._explain(x * factor, out.classes, None).maps
            total += maps.flip(-1) if flip else maps
        return CamOutput(total / len(AUGMENTATIONS), out.classes, out.scores, out.logits)

    def _explain(self, images: torch.Tensor, targets, top_k: int | None) -> CamOutput:
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} (layers {self._names}) was closed, by leaving its `with` "
                               f"block or by close(); make a new one to explain again")
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        size = tuple(self.size or images.shape[-2:])
        state = ModelState.capture(self.model)
        capture = ActivationCapture(self.layers, gradients=self.needs_gradients)
        try:
            self.model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
            with torch.enable_grad() if self.needs_gradients else torch.inference_mode():
                logits = self.model(images)
                if logits.dim() != 2:
                    raise ValueError(f"the model returned shape {tuple(logits.shape)}; expected (B, C) logits")
                missing = [n for n in self.target_layers if n not in capture.outputs]
                if missing:
                    raise RuntimeError(f"the forward pass never ran target layer(s) {missing}")
                classes = self._targets(logits.detach(), targets, top_k)
                acts = [capture.outputs[n] for n in self.target_layers]
                capture.remove()  # methods that run the model again must not re-capture
                maps = self._maps(images, logits, classes, acts, size)
        finally:
            capture.remove()
            capture.clear()
            state.restore()
        logits = logits.detach()
        scores = logits.float().softmax(dim=1).gather(1, classes)
        return CamOutput(maps.detach(), classes, scores, logits)

    def _maps(self, images: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor, acts: list[torch.Tensor],
              size: tuple[int, int]) -> torch.Tensor:
        """``(B, K, H, W)`` maps for ``classes`` (B, K) from the target layers' outputs ``acts``."""
        raise NotImplementedError

    def maps_view(self, act: torch.Tensor, name: str, batch: int) -> torch.Tensor:
        """A target layer's output as ``(B, C, h, w)`` maps (token sequences as their patch grid)."""
        return as_maps(act, batch, name, **self.token_layout[name])


def average_layers(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Maps of several target layers (each normalised) averaged; one layer's maps as they are."""
    return per_layer[0] if len(per_layer) == 1 else torch.stack(per_layer).mean(0)


class GradCAM(CamExplainer):
    """Gradient-weighted CAMs through :func:`sportsnet.ops.fused_gradcam`.

    Args:
        method: one of ``sportsnet.ops.METHODS``; the other arguments as :class:`CamExplainer`.
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
                 method: str = "gradcam", size: tuple[int, int] | None = None, *, eigen_smooth: bool = False):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not one of {METHODS}")
        super().__init__(model, target_layer, size)
        self.method = self.name = method
        self.eigen_smooth = eigen_smooth

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        maps = torch.empty(B, K, *size, dtype=torch.float32, device=images.device)
        for k in range(K):
            score = self._score(logits, classes[:, k]).sum()  # images are independent in eval mode
            grads = torch.autograd.grad(score, acts, retain_graph=k < K - 1)
            maps[:, k] = average_layers([self._from_gradients(self.maps_view(a.detach(), n, B),
                                                              self.maps_view(g, n, B), size)
                                         for n, a, g in zip(self.target_layers, acts, grads)])
        return maps

    def _score(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``(B,)``: what is differentiated for target ``classes`` (B,): here the class's logit."""
        return logits.gather(1, classes[:, None])[:, 0]

    def _from_gradients(self, A: torch.Tensor, G: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, H, W)`` maps of one target layer from its activations and one target's gradients. With
        ``eigen_smooth`` (pytorch-grad-cam's option), the map is the first principal component of the
        method's per-channel terms (:func:`sportsnet.ops.reference.channel_terms`) instead of their sum."""
        if self.eigen_smooth:
            X = channel_terms(A.float(), G.float(), self.method)
            weights, bias = principal_projection(X)
            return fused_weighted_cam(X, weights, size, bias=bias)
        return fused_gradcam(A, G, size, method=self.method)
