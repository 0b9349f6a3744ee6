"""Transformer-native explanations of vision transformers: LeGrad, attention rollout and gradient-weighted
rollout, on torchvision's and timm's ViTs and open_clip's ViT towers (a CLIP classifier's text targets
included).

    with LeGrad(vit) as cam:                          # the last two blocks, as LeGrad's own code
        out = cam(images, targets=labels)             # out.maps (B, K, H, W) in [0, 1], as every method
    with GradientRollout(zero_shot_clip) as cam:      # a ZeroShotClassifier: its classes are text prompts
        out = cam(images, top_k=3)

- :class:`LeGrad` (Bousselham et al. 2024, "LeGrad: An Explainability Method for Vision Transformers via
  Feature Formation Sensitivity"): for each chosen block l, the class's score s_l read from that block's
  tokens (their mean, through the model's final norm and head: the model's own head applied as if l were
  the last block); the gradient of s_l with respect to block l's attention probabilities A_l, its positive
  part averaged over heads and queries, gives one relevance per key token; the patch tokens' relevances,
  averaged over the blocks, are the map. As torchcam's ``LeGrad`` (tested to agree) and LeGrad's code.
- :class:`AttentionRollout` (Abnar and Zuidema 2020, "Quantifying Attention Flow in Transformers"): each
  block's attention averaged over heads (``head_fusion``), half of it mixed with the identity for the
  residual connection, rows renormalised, multiplied through the blocks; the class token's row (the mean of
  the rows for a model without one) over the patch tokens. Class-agnostic: every target gets the same map.
- :class:`GradientRollout` (Chefer et al. 2021, "Generic Attention-model Explainability for Interpreting
  Bi-Modal and Encoder-Decoder Transformers", the method most used to explain CLIP): R = I, then for each
  block R <- R + mean_heads((dA * A)^+) R with dA the gradient of the target's logit; the class token's
  row over the patches.

How the attention probabilities are reached without patching anything (:class:`AttentionTap`): forward
hooks and pre-hooks that exist for one call only. ``nn.MultiheadAttention`` (torchvision's
``EncoderBlock.self_attention``, open_clip's standard blocks) is asked for its per-head weights by a
forward pre-hook (``need_weights=True, average_attn_weights=False``); a forward hook then recomputes the
module's output from those weights (value projection, weights @ values, output projection), so that the
weights the method differentiates are the ones the rest of the network used. open_clip's own ``Attention``
(its custom blocks: QK norm, scaled cosine attention, head scales) computes its softmax inside
``scaled_dot_product_attention``; a forward hook recomputes the whole module from its ``in_proj_weight``
with an explicit softmax. timm's ``Attention`` has an unfused path: its ``fused_attn`` flag is turned off
for the call (and restored), and a hook on its ``attn_drop`` keeps the probabilities. Only the blocks a
method needs are tapped; every other block keeps its fused attention. The model's modules, flags, train
mode and ``requires_grad`` flags are as they were after the call, also after an exception.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import fused_weighted_cam
from .explainer import CamExplainer, TargetLayers
from .layouts import patch_grid

#: What the attention methods explain: token sequences of these families.
FAMILIES = "torchvision's VisionTransformer, timm's ViTs (blocks with .attn), open_clip's VisionTransformer"


def _library(m: nn.Module) -> str:
    return type(m).__module__.split(".")[0]


@dataclass
class Tower:
    """What the attention methods need to know about a vision transformer inside a model."""

    name: str  # the tower's dotted name in the model ("" for the model itself)
    blocks: list[str]  # dotted names of its transformer blocks, in order
    prefix_tokens: int  # class (and other non-patch) tokens before the patches
    batch_first: bool  # whether the blocks' outputs are (B, N, D) (else (N, B, D))
    #: tokens (B, N, D) of a block -> (B, C) class scores, the model's head read from that block (LeGrad);
    #: None where the model's head is not known (pass ``score_projection=``)
    score: Callable[[torch.Tensor], torch.Tensor] | None
    family: str


def _timm_score(m: nn.Module) -> Callable | None:
    if getattr(m, "attn_pool", None) is not None or not all(hasattr(m, a) for a in ("norm", "head")):
        return None
    fc_norm, head_drop = getattr(m, "fc_norm", nn.Identity()), getattr(m, "head_drop", nn.Identity())
    return lambda z: m.head(head_drop(fc_norm(m.norm(z.mean(1)))))


def _open_clip_features(m: nn.Module) -> Callable | None:
    if getattr(m, "attn_pool", None) is not None:
        return None

    def features(z: torch.Tensor) -> torch.Tensor:
        f = m.ln_post(z.mean(1))
        return f @ m.proj if m.proj is not None else f

    return features


def find_tower(model: nn.Module, score_projection: Callable | None = None) -> Tower:
    """The vision transformer in ``model`` (the outermost one) and how to read a class score from any of its
    blocks: the model's own head when the tower is the model (torchvision, timm) or the image tower of a
    classifier that says how its logits follow from the tower's features (``logits_from_features``, as
    :class:`sportsnet.models.zero_shot.ZeroShotClassifier`); else ``score_projection``."""
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        kind, library = type(m).__name__, _library(m)
        if library == "torchvision" and kind == "VisionTransformer":
            blocks = [f"{prefix}encoder.layers.{n}" for n, _ in m.encoder.layers.named_children()]
            own = (lambda z, m=m: m.heads(m.encoder.ln(z.mean(1)))) if m is model else None
            return Tower(name, blocks, 1, True, score_projection or own, "torchvision ViT")
        if library == "open_clip" and kind == "VisionTransformer":
            blocks = [f"{prefix}transformer.resblocks.{i}" for i in range(len(m.transformer.resblocks))]
            features = _open_clip_features(m)
            head = getattr(model, "logits_from_features", None)
            own = (lambda z: head(features(z))) if features and callable(head) and getattr(model, "visual",
                                                                                            None) is m else None
            return Tower(name, blocks, 1, bool(m.transformer.batch_first), score_projection or own,
                         "open_clip ViT tower")
        blocks = getattr(m, "blocks", None)
        if (library == "timm" and isinstance(getattr(m, "num_prefix_tokens", None), int)
                and isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks)
                and all(isinstance(getattr(b, "attn", None), nn.Module) for b in blocks)):
            own = _timm_score(m) if m is model else None
            return Tower(name, [f"{prefix}blocks.{i}" for i in range(len(blocks))], m.num_prefix_tokens, True,
                         score_projection or own, f"timm {kind}")
    raise ValueError(f"{type(model).__name__} holds no vision transformer these methods can read ({FAMILIES})")


def _attention_of(block: nn.Module, name: str) -> nn.Module:
    for attr in ("self_attention", "attn"):
        m = getattr(block, attr, None)
        if isinstance(m, nn.Module):
            return m
    raise ValueError(f"block {name!r} ({type(block).__name__}) has no self_attention or attn module")


# --- reaching the attention probabilities -------------------------------------------------------------------------


def _mha_values(module: nn.MultiheadAttention, value: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``nn.MultiheadAttention``'s output recomputed from its per-head ``weights`` (B, h, Nq, Nk)."""
    v = value if module.batch_first else value.transpose(0, 1)  # (B, Nk, E)
    E, h = module.embed_dim, module.num_heads
    w = module.in_proj_weight[2 * E:] if module.in_proj_weight is not None else module.v_proj_weight
    b = module.in_proj_bias[2 * E:] if module.in_proj_bias is not None else None
    v = F.linear(v, w, b).unflatten(-1, (h, E // h)).transpose(1, 2)  # (B, h, Nk, E/h)
    out = (weights.to(v.dtype) @ v).transpose(1, 2).flatten(2)  # (B, Nq, E)
    out = module.out_proj(out)
    return out if module.batch_first else out.transpose(0, 1)


def _open_clip_attention(module: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> tuple:
    """open_clip's ``Attention`` recomputed with an explicit softmax: ``(output, probabilities)``."""
    N, L, C = x.shape
    q, k, v = (t.unflatten(-1, (module.num_heads, -1)).transpose(1, 2)
               for t in F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1))
    if module.logit_scale is not None:
        scale = torch.clamp(module.logit_scale, max=module.logit_scale_max).exp()
        logits = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)) * scale
    else:
        logits = (module.ln_q(q) * module.scale) @ module.ln_k(k).transpose(-1, -2)
    if attn_mask is not None:
        if attn_mask.ndim == 3:
            attn_mask = attn_mask.reshape(N, module.num_heads, L, L)
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=logits.dtype).masked_fill_(attn_mask, float("-inf"))
        logits = logits + attn_mask.to(logits.dtype)
    probs = logits.softmax(dim=-1)
    out = probs @ v
    if module.head_scale is not None:
        out = out * module.head_scale
    out = module.ln_inner(out.transpose(1, 2).reshape(N, L, C))
    return module.out_drop(module.out_proj(out)), probs


class AttentionTap:
    """For one forward (a ``with`` block): the attention probabilities ``(B, heads, N, N)`` of the chosen
    blocks, in the graph (their gradients are the methods' input), and, with ``tokens``, each chosen block's
    output tokens ``(B, N, D)``. See the module docstring for how each kind of attention is reached."""

    def __init__(self, model: nn.Module, blocks: Sequence[str], batch_first: bool, tokens: bool = False):
        modules = dict(model.named_modules())
        self.blocks = list(blocks)
        self.attentions = [_attention_of(modules[b], b) for b in self.blocks]
        self._block_modules = [modules[b] for b in self.blocks]
        self.batch_first, self.keep_tokens = batch_first, tokens
        self.probs: list[torch.Tensor | None] = [None] * len(self.blocks)
        self.tokens: list[torch.Tensor | None] = [None] * len(self.blocks)
        self._handles: list = []
        self._flags: list[tuple[nn.Module, bool]] = []
        self._asked: dict[int, tuple[bool, bool]] = {}  # block -> the caller's (need_weights, average_attn_weights)
        for name, attn in zip(self.blocks, self.attentions):
            if isinstance(attn, nn.MultiheadAttention):
                if attn.bias_k is not None or attn.add_zero_attn:
                    raise ValueError(f"block {name!r}: attention with added key/value tokens (bias_k, add_zero_attn) "
                                     f"has more keys than tokens; not supported")
            elif _library(attn) == "open_clip" and hasattr(attn, "in_proj_weight"):
                pass
            elif isinstance(getattr(attn, "fused_attn", None), bool) and isinstance(getattr(attn, "attn_drop", None),
                                                                                  nn.Module):
                pass
            else:
                raise ValueError(f"block {name!r}: its attention {type(attn).__name__} is not nn.MultiheadAttention, "
                                 f"open_clip's Attention or timm's Attention (with fused_attn and attn_drop)")

    def __enter__(self) -> "AttentionTap":
        try:
            for i, (block, attn) in enumerate(zip(self._block_modules, self.attentions)):
                self._tap(i, attn)
                if self.keep_tokens:
                    self._handles.append(block.register_forward_hook(self._keep_tokens(i)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module, flag in self._flags:
            module.fused_attn = flag
        self._flags.clear()

    def _keep_tokens(self, i: int):
        def hook(module, inputs, output):
            t = output[0] if isinstance(output, tuple) else output
            self.tokens[i] = t if self.batch_first else t.transpose(0, 1)

        return hook

    def _tap(self, i: int, attn: nn.Module) -> None:
        if isinstance(attn, nn.MultiheadAttention):
            self._handles.append(attn.register_forward_pre_hook(self._ask_weights(i), with_kwargs=True))
            self._handles.append(attn.register_forward_hook(self._mha_output(i), with_kwargs=True))
        elif _library(attn) == "open_clip":
            self._handles.append(attn.register_forward_hook(self._open_clip_output(i), with_kwargs=True))
        else:  # timm
            self._flags.append((attn, attn.fused_attn))
            attn.fused_attn = False
            self._handles.append(attn.attn_drop.register_forward_hook(self._keep(i)))

    def _ask_weights(self, i: int):
        def hook(module, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            # nn.MultiheadAttention.forward(query, key, value, key_padding_mask, need_weights, attn_mask,
            # average_attn_weights, is_causal): positional or keyword. The caller's choice is kept, to be
            # answered as asked.
            caller = []
            for position, key, value, default in ((4, "need_weights", True, True),
                                                  (6, "average_attn_weights", False, True)):
                if len(args) > position:
                    caller.append(bool(args[position]))
                    args[position] = value
                else:
                    caller.append(bool(kwargs.get(key, default)))
                    kwargs[key] = value
            self._asked[i] = tuple(caller)
            return tuple(args), kwargs

        return hook

    def _mha_output(self, i: int):
        def hook(module, args, kwargs, output):
            query, key, value = (list(args) + [kwargs.get(k) for k in ("query", "key", "value")][len(args):])[:3]
            if query is not key or key is not value:
                raise ValueError(f"block {self.blocks[i]!r}: not self-attention (query, key and value differ)")
            weights = output[1]  # (B, h, Nq, Nk): asked for by the pre-hook
            self.probs[i] = weights
            wanted, averaged = self._asked[i]
            returned = (weights.mean(dim=1) if averaged else weights) if wanted else None
            return _mha_values(module, value, weights), returned

        return hook

    def _open_clip_output(self, i: int):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["x"]
            mask = args[1] if len(args) > 1 else kwargs.get("attn_mask")
            out, self.probs[i] = _open_clip_attention(module, x, mask)
            return out

        return hook

    def _keep(self, i: int):
        def hook(module, inputs, output):
            self.probs[i] = output

        return hook

    def checked(self) -> list[torch.Tensor]:
        """The probabilities of every chosen block; a block the forward never reached is an error."""
        missing = [b for b, p in zip(self.blocks, self.probs) if p is None]
        if missing:
            raise RuntimeError(f"the forward pass never ran the attention of block(s) {missing}")
        return [p for p in self.probs if p is not None]


# --- the methods --------------------------------------------------------------------------------------------------


class AttentionExplainer(CamExplainer):
    """What the attention methods share. ``target_layer`` names the transformer blocks to read (default: see
    each method).

    Args (besides :class:`CamExplainer`'s ``size``):
        score_projection: tokens ``(B, N, D)`` of a block -> ``(B, C)`` class scores (LeGrad), for models
            whose head is not known (:func:`find_tower`).
        prefix_tokens: the class and other non-patch tokens (default: the model's).
    """

    uses_target_layers = False
    transformer_only = True
    needs_gradients = False  # the classes come from a plain forward; _maps runs its own, with the taps
    #: Whether the method differentiates the target's score (LeGrad, gradient rollout) or not (rollout).
    differentiates = True
    #: Whether the method reads the tapped blocks' output tokens (LeGrad's per-block scores).
    needs_tokens = False

    def __init__(self, model: nn.Module, target_layer: TargetLayers = None, *, size: tuple[int, int] | None = None,
                 score_projection: Callable | None = None, prefix_tokens: int | None = None):
        if prefix_tokens is not None and (isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int)
                                          or prefix_tokens < 0):
            raise ValueError(f"prefix_tokens={prefix_tokens!r} must be a non-negative integer")
        self.tower = find_tower(model, score_projection)
        if target_layer is None:
            target_layer = self.default_blocks(self.tower.blocks)
        super().__init__(model, target_layer, size=size)
        not_blocks = [n for n in self.target_layers if n not in self.tower.blocks]
        if not_blocks:
            raise ValueError(f"{self.name}: target layers {not_blocks} are not transformer blocks of the "
                             f"{self.tower.family} (e.g. {self.tower.blocks[-1]!r})")
        self.prefix_tokens = self.tower.prefix_tokens if prefix_tokens is None else prefix_tokens

    def default_blocks(self, blocks: list[str]) -> list[str]:
        return blocks

    def _maps(self, images, logits, classes, acts, size):
        blocks = sorted(self.target_layers, key=self.tower.blocks.index)
        with torch.inference_mode(False), torch.enable_grad():
            tap = AttentionTap(self.model, blocks, self.tower.batch_first, tokens=self.needs_tokens)
            x = images.detach().clone().requires_grad_(self.differentiates)
            classes = classes.clone()  # made under inference_mode by the first forward
            with tap:
                out = self.model(x)
            relevance = self._relevance(out, classes, tap)  # (B, K, N - prefix)
        return self._to_maps(relevance.detach().float(), size)

    def _relevance(self, logits: torch.Tensor, classes: torch.Tensor, tap: AttentionTap) -> torch.Tensor:
        raise NotImplementedError

    def _to_maps(self, relevance: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, K, n = relevance.shape
        grid = patch_grid(n, self._image_hw)
        if grid is None:
            raise ValueError(f"{self.name}: {n} patch tokens (after {self.prefix_tokens} prefix tokens) do not tile "
                             f"a {self._image_hw[0]}x{self._image_hw[1]} image; pass prefix_tokens=")
        grids = relevance.reshape(B * K, 1, *grid)
        maps = fused_weighted_cam(grids, torch.ones(B * K, 1, device=grids.device), size)
        return maps.reshape(B, K, *size)


class LeGrad(AttentionExplainer):
    """LeGrad (module docstring); by default the last two blocks, as LeGrad's own code
    (``layer_index=-2``); ``target_layer=`` any blocks."""

    name = "legrad"
    needs_tokens = True

    def default_blocks(self, blocks):
        return blocks[-2:]

    def _relevance(self, logits, classes, tap):
        if self.tower.score is None:
            raise ValueError(f"legrad: the head of this {type(self.model).__name__} around its {self.tower.family} is "
                             f"not known; pass score_projection= (block tokens (B, N, D) -> (B, C) scores)")
        probs = tap.checked()
        scores = [self.tower.score(t) for t in tap.tokens]
        B, K = classes.shape
        out = torch.zeros(B, K, probs[0].shape[-1] - self.prefix_tokens, device=logits.device)
        for k in range(K):
            for layer, (s, a) in enumerate(zip(scores, probs)):
                last = k == K - 1 and layer == len(probs) - 1
                g, = torch.autograd.grad(s.gather(1, classes[:, k:k + 1]).sum(), a, retain_graph=not last)
                out[:, k] += g.float().relu().mean(dim=(1, 2))[:, self.prefix_tokens:]
        return out / len(probs)


class AttentionRollout(AttentionExplainer):
    """Attention rollout (module docstring). ``head_fusion``: ``mean`` (the paper), ``max`` or ``min``;
    ``discard_ratio``: the share of each fused attention's lowest weights set to 0 before the rollout
    (the class token's column kept), as jacobgil's vit-explain (0: none, the paper)."""

    name = "rollout"
    differentiates = False

    def __init__(self, model, target_layer=None, *, head_fusion: str = "mean", discard_ratio: float = 0.0, **options):
        if head_fusion not in ("mean", "max", "min"):
            raise ValueError(f"head_fusion={head_fusion!r} is not one of mean, max, min")
        if not 0 <= discard_ratio < 1:
            raise ValueError(f"discard_ratio={discard_ratio!r} must be in [0, 1)")
        super().__init__(model, target_layer, **options)
        self.head_fusion, self.discard_ratio = head_fusion, discard_ratio

    def _fused(self, per_head):
        fuse = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}
        a = fuse[self.head_fusion](per_head.float())
        if self.discard_ratio > 0:
            B, N, _ = a.shape
            flat = a.reshape(B, -1)
            drop = flat.topk(int(flat.shape[1] * self.discard_ratio), dim=1, largest=False).indices
            keep = torch.ones_like(flat, dtype=torch.bool).scatter_(1, drop, False).reshape(B, N, N)
            keep[:, :, :self.prefix_tokens] = True
            a = a * keep
        return a

    def _relevance(self, logits, classes, tap):
        probs = tap.checked()
        B, N = probs[0].shape[0], probs[0].shape[-1]
        eye = torch.eye(N, device=probs[0].device)
        rollout = eye.expand(B, N, N)
        for p in probs:
            a = (self._fused(p.detach()) + eye) / 2
            rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
        return _read_out(rollout, self.prefix_tokens)[:, None].expand(B, classes.shape[1], -1)


class GradientRollout(AttentionExplainer):
    """Gradient-weighted rollout, Chefer et al. 2021 (module docstring): every block."""

    name = "gradient-rollout"
    aliases = ("GenericAttentionExplainability", "chefer")

    def _relevance(self, logits, classes, tap):
        probs = tap.checked()
        B, N = probs[0].shape[0], probs[0].shape[-1]
        K = classes.shape[1]
        eye = torch.eye(N, device=logits.device)
        out = torch.empty(B, K, N - self.prefix_tokens, device=logits.device)
        for k in range(K):
            grads = torch.autograd.grad(logits.gather(1, classes[:, k:k + 1]).sum(), probs, retain_graph=k < K - 1)
            R = eye.expand(B, N, N)
            for p, g in zip(probs, grads):
                cam = (g.float() * p.detach().float()).clamp_min(0).mean(dim=1)
                R = R + cam @ R
            out[:, k] = _read_out(R, self.prefix_tokens)
        return out


def _read_out(R: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """``(B, N - prefix)``: the class token's row over the patches; without prefix tokens, the mean row."""
    row = R[:, 0] if prefix_tokens else R.mean(dim=1)
    return row[:, prefix_tokens:]


