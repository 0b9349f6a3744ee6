"""Target layers, activation capture, and leaving the model exactly as it was found.

Knows model *families* (by module class names) only to pick a default target layer; nothing here
knows about datasets.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` for a module or a dotted name; unknown names list close matches."""
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, m in modules.items():
            if m is layer:
                return name, m
        raise ValueError(f"the given {type(layer).__name__} is not a submodule of this {type(model).__name__}")
    if layer in modules and layer != "":
        return layer, modules[layer]
    close = difflib.get_close_matches(layer, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"no layer named {layer!r} in {type(model).__name__}{hint}")


def default_target_layer(model: nn.Module) -> str:
    """The usual Grad-CAM layer of a known family.

    VGG-style models (a ``features`` Sequential): the last ReLU of the conv base. open_clip ResNets
    (``ModifiedResNet``): ``layer4``. open_clip ViTs (``VisionTransformer``): the last block's ``ln_1``.
    """
    for name, m in model.named_modules():
        kind = type(m).__name__
        prefix = f"{name}." if name else ""
        if kind == "ModifiedResNet":
            return prefix + "layer4"
        if kind == "VisionTransformer" and hasattr(m, "transformer"):
            return f"{prefix}transformer.resblocks.{len(m.transformer.resblocks) - 1}.ln_1"
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        relus = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)]
        if relus:
            return f"features.{relus[-1]}"
    raise ValueError(
        f"no default target layer for {type(model).__name__}; pass target_layer= (a module or a dotted name "
        f"such as 'features.35')"
    )


@dataclass
class ModelState:
    """Per-module train/eval flags and per-parameter requires_grad flags, to restore exactly."""

    training: list[tuple[nn.Module, bool]]
    requires_grad: list[tuple[nn.Parameter, bool]]

    @classmethod
    def capture(cls, model: nn.Module) -> "ModelState":
        return cls([(m, m.training) for m in model.modules()], [(p, p.requires_grad) for p in model.parameters()])

    def restore(self) -> None:
        for m, training in self.training:
            m.training = training
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)


class ActivationCapture:
    """Forward hooks that keep each target layer's output.

    With ``gradients`` (the default), the first target layer the forward reaches gets a *detached*
    copy of its output that requires grad: with the parameters frozen, nothing before it records a
    graph, and the gradient stops there. Without, outputs are kept as they are (gradient-free methods
    run under ``torch.inference_mode``). The rest of the network gets a clone of what was captured, so
    an in-place op after the layer (``ReLU(inplace=True)`` after a conv) cannot overwrite it. Hooks are
    removed by :meth:`remove` (the explainers call it in a ``finally``).
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], gradients: bool = True):
        self.names = [n for n, _ in layers]
        self.gradients = gradients
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            captured = output
            if self.gradients and not output.requires_grad:
                captured = output.detach().requires_grad_(True)
            self.outputs[name] = captured
            return captured.clone()

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def clear(self) -> None:
        self.outputs.clear()


def as_maps(t: torch.Tensor, batch: int, name: str, batch_first: bool | None = None,
            prefix_tokens: int | None = None) -> torch.Tensor:
    """A layer output as a ``(B, C, h, w)`` map (a view, no copy).

    4-D outputs are maps already. Token sequences ``(B, N, D)`` (or ``(N, B, D)``) become
    ``(B, D, g, g)`` after dropping ``prefix_tokens`` leading non-patch tokens; when that is not
    known, N must be a square (no class token) or a square plus one (a class token, as in CLIP ViTs).
    """
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        if batch_first is None:
            batch_first = t.shape[0] == batch
        seq = t if batch_first else t.transpose(0, 1)  # (B, N, D)
        if seq.shape[0] != batch:
            raise ValueError(f"layer {name!r} gives a token sequence of shape {tuple(t.shape)} that does not "
                             f"match the batch of {batch}")
        n = seq.shape[1]
        candidates = [prefix_tokens] if prefix_tokens is not None else [0, 1]
        for prefix in candidates:
            g = math.isqrt(max(n - prefix, 0))
            if g > 0 and g * g == n - prefix:
                return seq[:, prefix:].transpose(1, 2).unflatten(2, (g, g))  # (B, D, g, g)
        raise ValueError(f"layer {name!r}: {n} tokens do not form a square grid after "
                         f"{' or '.join(map(str, candidates))} prefix token(s)")
    raise ValueError(f"layer {name!r} gives a tensor of shape {tuple(t.shape)}; expected a (B, C, h, w) map "
                     f"or a (B, N, D) token sequence")
