"""The network after a target layer, as a function of that layer's output.

Gradient-free methods that change the target layer's output (Ablation-CAM zeroes one channel at a
time) need the model's logits for many variants of one activation. Everything before the layer is
the same in every variant, so it should run once, not once per variant. :func:`rest_of_model` gives a
callable ``rest(outputs) -> logits`` for a batch of layer outputs:

- split: the model traced with ``torch.fx``; the nodes that depend on the target layer's output form
  the rest, provided nothing reaches them from the input by another path (a skip connection around
  the layer, a second use of the input). Then ``rest`` runs only those layers;
- otherwise (untraceable model, the layer called twice, a bypassing branch) full forwards of the
  image with a forward hook that replaces the layer's output by the variants, logged once per model
  and layer. Correct for any model, as slow as the naive method, but in large batches.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)
_logged: set[tuple[int, str]] = set()


def split_after(model: nn.Module, layer_name: str) -> tuple[torch.fx.GraphModule | None, str]:
    """``(rest, why)``: a GraphModule mapping the layer's output to the model's output, or None and the
    reason the split is unsafe or impossible."""
    class Tracer(torch.fx.Tracer):  # the target layer is one call, whatever it contains
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname == layer_name or super().is_leaf_module(m, qualname)

    try:
        traced = torch.fx.GraphModule(model, Tracer().trace(model))
    except Exception as e:  # control flow on values, unsupported calls...
        return None, f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0]})"
    nodes = list(traced.graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == layer_name]
    if len(calls) != 1:
        return None, f"layer {layer_name!r} is called {len(calls)} times in the traced graph (need exactly once)"
    target = calls[0]
    after: set[torch.fx.Node] = set()
    for n in nodes[nodes.index(target) + 1:]:
        if any(a is target or a in after for a in n.all_input_nodes):
            after.add(n)
    output = next(n for n in nodes if n.op == "output")
    if output not in after:
        return None, f"the model's output does not depend on layer {layer_name!r}"
    for n in after:
        for a in n.all_input_nodes:
            if a is not target and a not in after and a.op != "get_attr":
                return None, (f"{a.name} reaches {n.name} without passing through layer {layer_name!r} (a branch "
                              f"around it)")
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {target: graph.placeholder("activation")}

    def arg(a: torch.fx.Node) -> torch.fx.Node:
        if a not in env:  # a parameter or buffer read by the rest
            env[a] = graph.node_copy(a, arg)
        return env[a]

    for n in nodes:
        if n in after:
            env[n] = graph.node_copy(n, arg)
    return torch.fx.GraphModule(traced, graph), "split"


def rest_of_model(model: nn.Module, layer: tuple[str, nn.Module], images: torch.Tensor,
                  split: tuple[torch.fx.GraphModule | None, str] | None = None, batch_dim: int = 0
                  ) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """``rest(b, outputs) -> logits``: the model's logits when the target layer's output for image ``b``
    of ``images`` is replaced by each of ``outputs`` (a batch of variants along ``batch_dim``, the axis of
    the batch in the layer's output: 1 for sequence-first tokens). ``split``: a :func:`split_after` result
    to reuse (a caller with many calls traces once)."""
    name, module = layer
    rest, why = split if split is not None else split_after(model, name)
    key = (id(model), name)
    if rest is not None:
        return lambda b, outputs: rest(outputs)
    if key not in _logged:
        _logged.add(key)
        log.info("cam: full forwards for each variant at layer %r: %s", name, why)

    def full(b: int, outputs: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(lambda m, i, o: outputs)
        try:
            return model(images[b:b + 1].expand(outputs.shape[batch_dim], *images.shape[1:]))
        finally:
            handle.remove()

    return full
