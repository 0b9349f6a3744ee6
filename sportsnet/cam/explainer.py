"""Batched CAM explanations for any classifier returning ``(B, C)`` logits: the shared call
(:class:`CamExplainer`) and the gradient-weighted family (:class:`GradCAM`, :class:`GradCAMPlusPlus`,
:class:`XGradCAM`, :class:`HiResCAM`, :class:`LayerCAM`, :class:`GradCAMElementWise`).

    with GradCAMPlusPlus(model, target_layer="features.35") as cam:
        out = cam(images)                    # the predicted class
        out = cam(images, targets=labels)    # one class, (B,) or (B, K) classes
        out = cam(images, top_k=3)           # the 3 best classes, one forward pass
    out.maps     # (B, K, H, W) float32 in [0, 1] on the images' device
    out.classes  # (B, K) class indices; out.scores (B, K) softmax probabilities

Every explainer (this module's, and the others beside it: Score-CAM, Ablation-CAM, Eigen-CAM, ...) is built
the same way, ``Method(model, target_layer=None, *, size=None, layout=None, prefix_tokens=None,
reshape=None, **the method's options)``, and called the same way. One call puts the model in eval mode with
every parameter frozen, runs one forward with hooks on the target layers, picks the classes, and hands the
captured activations to the method; hooks live only for the duration of the call, and the model's mode and
``requires_grad`` flags are restored afterwards, also after an exception. The target layers' layouts
(``(B, C, h, w)``, channels-last, token sequences) are resolved on the first call
(:mod:`sportsnet.cam.layouts`): given, known from the model, or refused; never guessed.

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

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..ops import METHODS, fused_gradcam, fused_weighted_cam
from ..ops.reference import channel_terms
from .hooks import ActivationCapture, ModelState, resolve_layer
from .layouts import Layout, ModuleTrace, given_layout, resolve_layout
from .projection import principal_projection
from .targets import default_target_layer

log = logging.getLogger(__name__)

#: aug_smooth's test-time augmentations: (flip horizontally, scale), the identity first.
AUGMENTATIONS = [(False, 1.0), (False, 0.9), (False, 1.1), (True, 1.0), (True, 0.9), (True, 1.1)]

TargetLayers = str | nn.Module | Sequence[str | nn.Module] | None


@dataclass
class CamOutput:
    maps: torch.Tensor  # (B, K, H, W) float32 in [0, 1]
    classes: torch.Tensor  # (B, K) int64
    scores: torch.Tensor  # (B, K) softmax probability of each class
    logits: torch.Tensor  # (B, C) detached


class CamExplainer:
    """The shared call of every CAM method. Subclasses set :attr:`name`, :attr:`needs_gradients` and
    implement :meth:`_maps`.

    Args:
        model: maps ``(B, 3, H, W)`` images to ``(B, C)`` logits.
        target_layer: a module, a dotted name, or a list of them (maps per layer are normalised, then
            averaged); default: the family's usual layer (:func:`sportsnet.cam.default_target_layer`).
        size: ``(H, W)`` of the maps; default: the images' size.
        layout: how the target layers' outputs hold channels and positions, one of
            :data:`sportsnet.cam.layouts.LAYOUTS` (``BCHW``, ``BHWC``, ``BND``, ``NBD``); default: resolved
            from the model, or refused with the option to pass.
        prefix_tokens: leading non-patch tokens of a token layout (class, distillation, register tokens);
            default: the model's ``num_prefix_tokens`` (or its family's count).
        reshape: instead of ``layout``, a callable from a layer's output to ``(B, C, h, w)`` (as
            pytorch-grad-cam's ``reshape_transform``); it is applied to the gradients too.
    """

    #: Whether the forward records a graph from the target layers (gradient-based methods), or runs
    #: under ``torch.inference_mode`` (gradient-free ones).
    needs_gradients = True
    #: Whether the maps come from the target layers (FullGrad's do not: it ignores them).
    uses_target_layers = True
    #: Whether the method reads a vision transformer's attention (:mod:`sportsnet.cam.attention`), and so
    #: refuses, when built, a model without one.
    transformer_only = False
    #: The method's one spelling (``make_explainer``, ``explain.py --method``, result files).
    name = ""
    #: Other libraries' names for the method that :func:`sportsnet.cam.method_name` accepts, besides the
    #: class's own name.
    aliases: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, target_layer: TargetLayers = None, *, size: tuple[int, int] | None = None,
                 layout: str | None = None, prefix_tokens: int | None = None,
                 reshape: Callable[[torch.Tensor], torch.Tensor] | None = None):
        given_layout(layout, prefix_tokens, reshape)
        self.model, self.size = model, size
        if target_layer is None:
            target_layer = default_target_layer(model)
        layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
        if not layers:
            raise ValueError("target_layer is an empty list")
        self.layers = [resolve_layer(model, layer) for layer in layers]
        self._names = [n for n, _ in self.layers]
        self.layout_options = dict(layout=layout, prefix_tokens=prefix_tokens, reshape=reshape)
        #: Each target layer's resolved :class:`~sportsnet.cam.layouts.Layout`, from the first call on.
        self.layouts: dict[str, Layout] = {}
        self._image_hw: tuple[int, int] = (0, 0)
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

    def _unresolved(self) -> bool:
        return self.uses_target_layers and any(n not in self.layouts for n in self._names)

    def _resolve_layouts(self, acts: list[torch.Tensor], batch: int, trace: ModuleTrace | None) -> None:
        for name, act in zip(self._names, acts):
            if name not in self.layouts:
                layout = resolve_layout(self.model, name, act, batch, self._image_hw, trace, **self.layout_options)
                log.debug("cam: layer %r output %s read as %s (%s)", name, tuple(act.shape), layout.kind, layout.why)
                self.layouts[name] = layout

    def _explain(self, images: torch.Tensor, targets, top_k: int | None) -> CamOutput:
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} (layers {self._names}) was closed, by leaving its `with` "
                               f"block or by close(); make a new one to explain again")
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        self._image_hw = (int(images.shape[-2]), int(images.shape[-1]))
        size = tuple(self.size or self._image_hw)
        state = ModelState.capture(self.model)
        trace = ModuleTrace(self.model) if self._unresolved() else None
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
                acts = [capture.outputs[n] for n in self.target_layers]
                capture.remove()  # methods that run the model again must not re-capture
                if trace is not None:
                    trace.remove()
                    self._resolve_layouts(acts, len(images), trace)
                classes = self._targets(logits.detach(), targets, top_k)
                maps = self._maps(images, logits, classes, acts, size)
        finally:
            if trace is not None:
                trace.remove()
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

    def maps_view(self, act: torch.Tensor, name: str) -> torch.Tensor:
        """A target layer's output (or its gradient) as ``(B, C, h, w)`` maps, read through its layout."""
        return self.layouts[name].to_maps(act, name, self._image_hw)


def average_layers(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Maps of several target layers (each normalised) averaged; one layer's maps as they are."""
    return per_layer[0] if len(per_layer) == 1 else torch.stack(per_layer).mean(0)


class GradientWeightedCAM(CamExplainer):
    """What the gradient-weighted methods share: each target's gradient at the target layers, one
    :func:`sportsnet.ops.fused_gradcam` epilogue (its method :attr:`op_method`) per layer.

    Args (besides :class:`CamExplainer`'s):
        eigen_smooth: the map is the first principal component of the method's per-channel terms
            (:func:`sportsnet.ops.reference.channel_terms`) instead of their sum (pytorch-grad-cam's option).
    """

    #: The fused operator's method (one of ``sportsnet.ops.METHODS``).
    op_method = "gradcam"

    def __init__(self, model: nn.Module, target_layer: TargetLayers = None, *, size: tuple[int, int] | None = None,
                 eigen_smooth: bool = False, **layout_options):
        super().__init__(model, target_layer, size=size, **layout_options)
        self.eigen_smooth = eigen_smooth

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        maps = torch.empty(B, K, *size, dtype=torch.float32, device=images.device)
        for k in range(K):
            score = self._score(logits, classes[:, k]).sum()  # images are independent in eval mode
            grads = torch.autograd.grad(score, acts, retain_graph=k < K - 1)
            maps[:, k] = average_layers([self._from_gradients(self.maps_view(a.detach(), n), self.maps_view(g, n), size)
                                         for n, a, g in zip(self.target_layers, acts, grads)])
        return maps

    def _score(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``(B,)``: what is differentiated for target ``classes`` (B,): here the class's logit."""
        return logits.gather(1, classes[:, None])[:, 0]

    def _from_gradients(self, A: torch.Tensor, G: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, H, W)`` maps of one target layer from its activations and one target's gradients."""
        if self.eigen_smooth:
            X = channel_terms(A.float(), G.float(), self.op_method)
            weights, bias = principal_projection(X)
            return fused_weighted_cam(X, weights, size, bias=bias)
        return fused_gradcam(A, G, size, method=self.op_method)


def check_op_method(method: str, who: str) -> str:
    """``method`` if it is one of the fused operator's gradient methods, else a one-line error."""
    if method not in METHODS:
        raise ValueError(f"{who}: method={method!r} is not one of {', '.join(METHODS)}")
    return method


class GradCAM(GradientWeightedCAM):
    """Grad-CAM (Selvaraju et al., 2017): w_k = the mean over positions of G_k; map ReLU(sum_k w_k A_k)."""

    name, op_method = "gradcam", "gradcam"


class GradCAMPlusPlus(GradientWeightedCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018): w_k = sum(alpha ReLU(G_k)),
    alpha = G^2 / (2 G^2 + sum(A_k) G^3 + 1e-6)."""

    name, op_method, aliases = "gradcam++", "gradcam++", ("GradCAMpp",)


class XGradCAM(GradientWeightedCAM):
    """XGrad-CAM (Fu et al., 2020): w_k = sum(A_k G_k) / (sum(A_k) + eps)."""

    name, op_method = "xgradcam", "xgradcam"


class HiResCAM(GradientWeightedCAM):
    """HiResCAM (Draelos and Carin, 2020): map ReLU(sum_k G_k A_k), element-wise."""

    name, op_method = "hirescam", "hirescam"


class LayerCAM(GradientWeightedCAM):
    """LayerCAM (Jiang et al., 2021): map ReLU(sum_k ReLU(G_k) A_k)."""

    name, op_method = "layercam", "layercam"


class GradCAMElementWise(GradientWeightedCAM):
    """pytorch-grad-cam's GradCAMElementWise: map ReLU(sum_k ReLU(G_k A_k))."""

    name, op_method = "gradcam-elementwise", "gradcam-elementwise"
