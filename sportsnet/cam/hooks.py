"""Target layers by name, activation capture, and leaving the model exactly as it was found.

Which layer a family's CAM uses by default is :mod:`sportsnet.cam.targets`; how a layer's output holds its
channels is :mod:`sportsnet.cam.layouts`.
"""
from __future__ import annotations

import difflib
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
