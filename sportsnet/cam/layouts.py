"""Where a target layer keeps its channels and positions: the layout of its output, known before a map is made.

A CAM needs the target layer's output as ``(B, C, h, w)`` maps. Layers give other layouts: Swin and MambaOut
stages are channels-last ``(B, h, w, C)``; ViT blocks give token sequences ``(B, N, D)`` (open_clip's older
towers ``(N, B, D)``) that start with prefix tokens (a class token, DeiT's distillation token, registers)
before the ``h x w`` patch tokens. Reading a channels-last stage as ``(B, C, h, w)`` gives a confident map
of the wrong axes, so a layout is never guessed from the output's shape. It is, in this order:

1. given: ``reshape=`` (a callable from the layer's output to ``(B, C, h, w)``, as pytorch-grad-cam's
   ``reshape_transform``) or ``layout=`` (one of :data:`LAYOUTS`, with ``prefix_tokens=`` for tokens);
2. resolved from the model: for a 4-D output, the module that last produced a tensor of exactly that shape
   (the layer itself, a module inside it, or one before it), when its channel axis is known
   (convolutions, batch/group norms, 2-D poolings and ``LayerNorm2d``: axis 1; ``nn.Linear`` and
   ``nn.LayerNorm``: the last axis). Found by a record of one forward's module outputs, taken on the
   explainer's first call. A permute between that module and the layer would change the shape unless
   axes 1 and 3 have the same size; such an output is resolved only by the layer itself. For tokens, the
   prefix count is the model's: timm's ``num_prefix_tokens``; one class token for torchvision's and
   open_clip's ``VisionTransformer``; the batch axis is open_clip's ``batch_first``, the first for timm's
   and torchvision's transformers, or the one axis of size B;
3. otherwise refused, with one line naming the layer, its shape and the option to pass.

One exception to 2, stated because it reads the shape: a token sequence whose model declares no prefix
count is accepted when exactly one of 0 or 1 prefix tokens leaves the image's grid of patches (a square
number of tokens for a square image). For grids of 2 x 2 patches or more with at most 2g prefix tokens
that choice is unique, so it cannot pick a wrong count silently; a model with registers and no
declaration is refused.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

#: The layouts ``layout=`` accepts: maps, channels-last maps, batch-first and sequence-first tokens.
LAYOUTS = ("BCHW", "BHWC", "BND", "NBD")
_LAYOUT_HELP = ("layout='BCHW' (maps), 'BHWC' (channels-last maps), 'BND' or 'NBD' (tokens, batch or sequence "
                "first, with prefix_tokens=N), or reshape= (a callable returning (B, C, h, w))")


class LayoutError(ValueError):
    """A target layer's output that cannot be read as maps: its layout is neither known nor given, or the one
    given does not fit it (the message names the layer, its shape and the option to pass)."""


def channel_axis(module: nn.Module) -> int | None:
    """The axis a module's output keeps its channels on: 1 (convolutions, batch/group/instance norms, 2-D
    poolings and dropouts, ``LayerNorm2d``), -1 (``nn.Linear``, ``nn.LayerNorm``, RMS norms), or None when
    the module does not say (activations, containers, ``Identity``, reshapes)."""
    kind = type(module).__name__
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and kind.lower().endswith(("2d", "3d")):
        return 1  # timm's and torchvision's LayerNorm2d: an nn.LayerNorm that permutes to normalise axis 1
    if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                           nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                           nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                           nn.Dropout2d, nn.Dropout3d, nn.LocalResponseNorm)):
        return 1
    if kind in ("FrozenBatchNorm2d", "BatchNormAct2d", "GroupNormAct", "RmsNorm2d", "SimpleNorm2d"):
        return 1
    if isinstance(module, (nn.Linear, nn.LayerNorm)) or kind in ("RMSNorm", "RmsNorm", "SimpleNorm"):
        return -1
    return None


class ModuleTrace:
    """Forward hooks on every module of a model recording, in the order they finish, each module's name,
    channel axis and output shape: the evidence :func:`resolve_layout` reads. Remove with :meth:`remove`."""

    def __init__(self, model: nn.Module):
        self.records: list[tuple[str, int | None, tuple[int, ...]]] = []
        self.handles = [m.register_forward_hook(self._hook(name, channel_axis(m)))
                        for name, m in model.named_modules()]

    def _hook(self, name: str, axis: int | None):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self.records.append((name, axis, tuple(output.shape)))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def evidence(self, name: str, shape: tuple[int, ...]) -> tuple[str, int] | None:
        """``(module name, axis)`` of the module that last produced a tensor of ``shape`` at or before layer
        ``name``'s (last) output and says where its channels are; None if none does."""
        ends = [i for i, (n, _, s) in enumerate(self.records) if n == name and s == shape]
        if not ends:
            return None
        for n, axis, s in reversed(self.records[:ends[-1] + 1]):
            if axis is not None and s == shape:
                return n, axis
        return None


def _ancestors(model: nn.Module, layer_name: str) -> list[nn.Module]:
    """The layer, then each module containing it, up to the model itself."""
    parts = layer_name.split(".")
    modules = dict(model.named_modules())
    return [modules[name] for name in (".".join(parts[:i]) for i in range(len(parts), -1, -1)) if name in modules]


def _nearest_attribute(model: nn.Module, layer_name: str, attribute: str, kind: type):
    """``attribute`` of the layer or its nearest ancestor that has one of type ``kind`` (open_clip
    transformers have ``batch_first``, timm ViTs ``num_prefix_tokens``)."""
    for m in _ancestors(model, layer_name):
        value = getattr(m, attribute, None)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    return None


def declared_batch_first(model: nn.Module, layer_name: str) -> tuple[bool, str] | None:
    """``(batch_first, source)`` for a layer's token sequence when the model says: open_clip's transformers
    carry ``batch_first``; timm's and torchvision's transformers are batch-first throughout."""
    value = _nearest_attribute(model, layer_name, "batch_first", bool)
    if value is not None:
        return value, "the model's batch_first"
    for m in _ancestors(model, layer_name):
        library = type(m).__module__.split(".")[0]
        if library in ("timm", "torchvision"):
            return True, f"{library}'s transformers are batch-first"
    return None


def declared_prefix_tokens(model: nn.Module, layer_name: str) -> tuple[int, str] | None:
    """``(count, source)``: the leading non-patch tokens the model declares for a layer's token sequence."""
    count = _nearest_attribute(model, layer_name, "num_prefix_tokens", int)
    if count is not None:
        return count, "the model's num_prefix_tokens"
    for m in _ancestors(model, layer_name):
        library = type(m).__module__.split(".")[0]
        if type(m).__name__ == "VisionTransformer" and library == "torchvision":
            return 1, "torchvision's VisionTransformer (one class token)"
        if type(m).__name__ == "VisionTransformer" and library == "open_clip" and hasattr(m, "class_embedding"):
            return 1, "open_clip's VisionTransformer (one class token)"
    return None


def patch_grid(n: int, image_hw: tuple[int, int]) -> tuple[int, int] | None:
    """``(gh, gw)`` with ``gh * gw == n`` in the image's aspect ratio (a square for a square image); None if
    no such grid exists."""
    H, W = image_hw
    if n < 1:
        return None
    if H == W:
        g = math.isqrt(n)
        return (g, g) if g * g == n else None
    best = min(((d, n // d) for d in range(1, n + 1) if n % d == 0), key=lambda p: abs(math.log(p[0] * W / (p[1] * H))))
    # Patches that tile the image up to rounding: within one patch of the exact ratio on each side.
    return best if abs(best[0] * W / H - best[1]) <= 1 and abs(best[1] * H / W - best[0]) <= 1 else None


@dataclass(frozen=True)
class Layout:
    """How one target layer's output becomes ``(B, C, h, w)`` maps.

    ``kind`` is one of :data:`LAYOUTS` or ``"reshape"`` (``reshape`` then maps the output); ``prefix_tokens``
    counts the leading non-patch tokens of a token layout; ``why`` says where the layout came from.
    """

    kind: str
    prefix_tokens: int = 0
    why: str = ""
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def batch_dim(self) -> int:
        """The axis of the batch in the layer's output."""
        return 1 if self.kind == "NBD" else 0

    def to_maps(self, t: torch.Tensor, name: str, image_hw: tuple[int, int]) -> torch.Tensor:
        """``t`` (the layer's output, or its gradient) as ``(B, C, h, w)``; a view except for ``reshape``."""
        if self.kind == "reshape":
            maps = self.reshape(t)
            if not isinstance(maps, torch.Tensor) or maps.dim() != 4 or maps.shape[0] != t.shape[0]:
                got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                raise LayoutError(f"reshape= turned layer {name!r}'s output {tuple(t.shape)} into {got}; expected "
                                 f"(B, C, h, w) with the same batch of {t.shape[0]}")
            return maps
        expected_dims = 4 if self.kind in ("BCHW", "BHWC") else 3
        if t.dim() != expected_dims:
            raise LayoutError(f"layer {name!r} gives a tensor of shape {tuple(t.shape)}, which layout={self.kind!r} "
                             f"cannot read (it needs {expected_dims} dimensions); pass {_LAYOUT_HELP}")
        if self.kind == "BCHW":
            return t
        if self.kind == "BHWC":
            return t.permute(0, 3, 1, 2)
        seq = t if self.kind == "BND" else t.transpose(0, 1)  # (B, N, D)
        n = seq.shape[1] - self.prefix_tokens
        grid = patch_grid(n, image_hw)
        if grid is None:
            raise LayoutError(f"layer {name!r}: {seq.shape[1]} tokens minus {self.prefix_tokens} prefix token(s) "
                             f"leave {n}, which is no grid of patches for a {image_hw[0]}x{image_hw[1]} image; pass "
                             f"prefix_tokens= (the class, distillation and register tokens) or reshape=")
        return seq[:, self.prefix_tokens:].transpose(1, 2).unflatten(2, grid)  # (B, D, gh, gw)


def given_layout(layout: str | None, prefix_tokens: int | None,
                 reshape: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
    """Check the explainer's ``layout``, ``prefix_tokens`` and ``reshape`` arguments (one line per mistake)."""
    if reshape is not None and (layout is not None or prefix_tokens is not None):
        raise ValueError("pass reshape= or layout= (with prefix_tokens=), not both: reshape= already says how the "
                         "layer's output becomes (B, C, h, w)")
    if reshape is not None and not callable(reshape):
        raise ValueError(f"reshape={reshape!r} must be a callable from the layer's output to (B, C, h, w)")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if prefix_tokens is not None and (not isinstance(prefix_tokens, int) or isinstance(prefix_tokens, bool)
                                      or prefix_tokens < 0):
        raise ValueError(f"prefix_tokens={prefix_tokens!r} must be a non-negative integer")
    if prefix_tokens is not None and layout in ("BCHW", "BHWC"):
        raise ValueError(f"prefix_tokens={prefix_tokens} applies to token layouts (BND, NBD), not layout={layout!r}")


def resolve_layout(model: nn.Module, name: str, output: torch.Tensor, batch: int, image_hw: tuple[int, int],
                   trace: ModuleTrace | None, *, layout: str | None = None, prefix_tokens: int | None = None,
                   reshape: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Layout:
    """The :class:`Layout` of layer ``name`` of ``model`` whose output for ``batch`` images of ``image_hw`` is
    ``output``: given, resolved from the model (``trace`` is a :class:`ModuleTrace` of that forward), or a
    ``ValueError`` naming the option to pass."""
    shape = tuple(output.shape)
    if reshape is not None:
        return Layout("reshape", why="reshape=", reshape=reshape)
    if layout in ("BCHW", "BHWC"):
        return Layout(layout, why="layout=")
    if layout is not None and output.dim() != 3:
        raise LayoutError(f"layer {name!r} gives a tensor of shape {shape}, which layout={layout!r} cannot read (it "
                          f"needs 3 dimensions); pass {_LAYOUT_HELP}")
    if output.dim() == 4:
        found = trace.evidence(name, shape) if trace is not None else None
        if found is None:
            raise LayoutError(f"cannot tell whether layer {name!r}'s output {shape} is (B, C, h, w) or (B, h, w, C): "
                              f"no module with a known channel axis produced that shape; pass {_LAYOUT_HELP}")
        source, axis = found
        if shape[1] == shape[3] and source != name:
            # As many channels as columns: a functional permute between that module and the layer would keep
            # the shape, so only the layer itself can say.
            raise LayoutError(f"cannot tell whether layer {name!r}'s output {shape} is (B, C, h, w) or (B, h, w, C): "
                             f"axes 1 and 3 have the same size; pass {_LAYOUT_HELP}")
        kind = "BCHW" if axis == 1 else "BHWC"
        return Layout(kind, why=f"{source or 'the model'} keeps channels on axis {1 if axis == 1 else 3}")
    if output.dim() != 3:
        raise LayoutError(f"layer {name!r} gives a tensor of shape {shape}; expected (B, C, h, w) maps or a (B, N, D) "
                         f"token sequence; pass {_LAYOUT_HELP}")
    found = trace.evidence(name, shape) if trace is not None else None
    if found is not None and found[1] == 1 and layout is None:
        raise LayoutError(f"layer {name!r} gives {shape}, channels on axis 1 ({found[0]}): a 1-D signal, not a token "
                         f"sequence or a map; pass {_LAYOUT_HELP}")
    kind, why = layout, "layout="
    if kind is None:
        declared = declared_batch_first(model, name)
        if declared is not None:
            kind, why = ("BND" if declared[0] else "NBD"), declared[1]
        elif shape[0] == batch and shape[1] != batch:
            kind, why = "BND", f"only axis 0 has the batch's size {batch}"
        elif shape[1] == batch and shape[0] != batch:
            kind, why = "NBD", f"only axis 1 has the batch's size {batch}"
        else:
            raise LayoutError(f"layer {name!r} gives tokens of shape {shape} with {batch} images: the batch could be "
                             f"axis 0 or 1; pass layout='BND' or 'NBD'")
    seq_len = shape[1] if kind == "BND" else shape[0]
    if prefix_tokens is not None:
        return Layout(kind, prefix_tokens, f"{why}, prefix_tokens={prefix_tokens}")
    declared = declared_prefix_tokens(model, name)
    if declared is not None:
        return Layout(kind, declared[0], f"{why}, {declared[0]} prefix token(s) from {declared[1]}")
    fits = [p for p in (0, 1) if patch_grid(seq_len - p, image_hw) is not None]
    if image_hw[0] == image_hw[1] and len(fits) == 1:
        return Layout(kind, fits[0], f"{why}, {fits[0]} prefix token(s): the only count of 0 or 1 that leaves a "
                                     f"square grid (the model declares none)")
    raise LayoutError(f"layer {name!r} gives {seq_len} tokens and the model declares no prefix tokens (no "
                     f"num_prefix_tokens); pass prefix_tokens= (class, distillation and register tokens) or reshape=")


def ablation_index(layout: Layout, single: torch.Tensor, name: str, image_hw: tuple[int, int]) -> torch.Tensor:
    """``(C, h*w)`` int64: for one image's layer output ``single`` (batch of 1), the flat position in it of every
    element of each channel's map. Ablation-CAM zeroes a channel there, whatever the layout; a ``reshape`` must
    only select and rearrange elements (as every layout does), which is checked."""
    numel = single.numel()
    flat = torch.arange(numel, dtype=torch.float64, device=single.device).view(single.shape)
    index = layout.to_maps(flat, name, image_hw)[0].flatten(1)  # (C, h*w)
    rounded = index.round()
    ok = (index == rounded).all() and rounded.min() >= 0 and rounded.max() < numel and \
        rounded.flatten().unique().numel() == rounded.numel()
    if not ok:
        raise ValueError(f"Ablation-CAM needs reshape= to only select and rearrange layer {name!r}'s elements, so "
                         f"that a channel can be zeroed in the layer's own output; this reshape computes new values")
    return rounded.long()
