"""CLIP-LoRA (Zanella and Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024), written
out: low-rank adapters on the attention projections of both CLIP towers, the rest frozen.

:func:`apply_lora` replaces every ``nn.MultiheadAttention`` under the chosen towers (open_clip's ViT image tower and
its text transformer) with :class:`LoRAMultiheadAttention`, which computes the same attention from the original
module's frozen weights plus ``scale * B @ A`` on the query, key, value (and optionally output) projections. ``B``
starts at zero, so until training moves it the model is the base model; ``A`` starts as in LoRA (Kaiming-uniform).
The paper's setting: rank 2, alpha 1, query/key/value, every layer of both towers. A ResNet image tower (open_clip's
``ModifiedResNet``) has one attention layer, its attention pool: :class:`LoRAAttentionPool` adapts that one.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

PROJECTIONS = ("q", "k", "v", "o")


def _adapters(module: nn.Module, dim: int, rank: int, alpha: float, targets: Iterable[str], like: torch.Tensor):
    """Give ``module`` the low-rank factors of the ``targets`` projections: ``lora_a`` (rank, dim, as in LoRA),
    ``lora_b`` (dim, rank, zero), ``scale = alpha / rank``; returns the new parameters."""
    targets = tuple(targets)
    if rank < 1:
        raise ValueError(f"rank={rank} must be >= 1")
    unknown = [t for t in targets if t not in PROJECTIONS]
    if unknown or not targets:
        raise ValueError(f"targets {list(targets)} must be some of {PROJECTIONS}")
    module.rank, module.scale, module.targets = rank, alpha / rank, targets
    module.lora_a, module.lora_b = nn.ParameterDict(), nn.ParameterDict()
    for t in targets:
        a = torch.empty(rank, dim, device=like.device, dtype=like.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        module.lora_a[t] = nn.Parameter(a)
        module.lora_b[t] = nn.Parameter(torch.zeros(dim, rank, device=a.device, dtype=a.dtype))
    return [*module.lora_a.values(), *module.lora_b.values()]


class LoRAMultiheadAttention(nn.Module):
    """``base`` (an ``nn.MultiheadAttention`` with packed, equal-size projections; kept frozen) plus low-rank updates
    of the ``targets`` projections. Called like ``base``; attention weights are returned only when asked for."""

    def __init__(self, base: nn.MultiheadAttention, rank: int = 2, alpha: float = 1.0,
                 targets: Iterable[str] = ("q", "k", "v"), dropout: float = 0.0):
        super().__init__()
        if not base._qkv_same_embed_dim or base.in_proj_weight is None:
            raise ValueError("LoRA needs an nn.MultiheadAttention with packed query/key/value projections")
        self.base = base.requires_grad_(False)
        self.batch_first, self.num_heads = base.batch_first, base.num_heads
        _adapters(self, base.embed_dim, rank, alpha, targets, base.in_proj_weight)
        self.dropout = nn.Dropout(dropout)

    def _project(self, x: torch.Tensor, which: str, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = F.linear(x, weight, bias)
        if which in self.targets:
            out = out + self.scale * F.linear(F.linear(self.dropout(x), self.lora_a[which]), self.lora_b[which])
        return out

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        base = self.base
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        E, H = base.embed_dim, self.num_heads
        w_q, w_k, w_v = base.in_proj_weight.chunk(3)
        b_q, b_k, b_v = base.in_proj_bias.chunk(3) if base.in_proj_bias is not None else (None, None, None)
        q = self._project(query, "q", w_q, b_q)
        k = self._project(key, "k", w_k, b_k)
        v = self._project(value, "v", w_v, b_v)
        B, L, S = q.shape[0], q.shape[1], k.shape[1]
        q, k, v = (t.reshape(B, -1, H, E // H).transpose(1, 2) for t in (q, k, v))  # (B, H, len, E/H)
        mask = None
        if attn_mask is not None:  # nn.MultiheadAttention's: True (or -inf) where attention is not allowed
            mask = _additive(attn_mask, q.dtype)
            mask = mask.view(1, 1, L, S) if mask.dim() == 2 else mask.view(B, H, L, S)
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, q.dtype).view(B, 1, 1, S)
            mask = pad if mask is None else mask + pad
        p = base.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(E // H)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(dim=-1), p)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
        out = out.transpose(1, 2).reshape(B, L, E)
        out = self._project(out, "o", base.out_proj.weight, base.out_proj.bias)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


class LoRAAttentionPool(nn.Module):
    """open_clip's ``AttentionPool2d`` (a ResNet image tower's last layer: attention of the mean token over the
    feature map, with separate q/k/v/c projections; kept frozen) with low-rank updates of the ``targets``
    projections (``o``: its output projection ``c_proj``), merged into the weights it attends with. Dropout on the
    adapters' input is not offered here: merged weights have no separate adapter path."""

    NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "c_proj"}

    def __init__(self, base: nn.Module, rank: int = 2, alpha: float = 1.0, targets: Iterable[str] = ("q", "k", "v")):
        super().__init__()
        if "o" in tuple(targets) and base.c_proj.out_features != base.c_proj.in_features:
            raise ValueError(f"the attention pool's output projection is {base.c_proj.in_features} -> "
                             f"{base.c_proj.out_features}; LoRA here adapts square projections only (drop 'o')")
        self.base = base.requires_grad_(False)
        _adapters(self, base.q_proj.in_features, rank, alpha, targets, base.q_proj.weight)

    def _weight(self, which: str) -> torch.Tensor:
        weight = getattr(self.base, self.NAMES[which]).weight
        if which not in self.targets:
            return weight
        return weight + self.scale * self.lora_b[which] @ self.lora_a[which]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        x = x.flatten(2).permute(2, 0, 1)  # (B, C, H, W) -> (HW, B, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + base.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=base.num_heads,
            q_proj_weight=self._weight("q"), k_proj_weight=self._weight("k"), v_proj_weight=self._weight("v"),
            in_proj_weight=None, in_proj_bias=torch.cat([base.q_proj.bias, base.k_proj.bias, base.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self._weight("o"),
            out_proj_bias=base.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False)
        return x[0]


def _is_attention_pool(module: nn.Module) -> bool:
    """open_clip's ``AttentionPool2d`` (by its parts, not its import path)."""
    return all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "c_proj", "num_heads",
                                            "positional_embedding"))


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: not allowed) as 0 / -inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def apply_lora(model: nn.Module, towers: Iterable[str] = ("visual", "transformer"), rank: int = 2, alpha: float = 1.0,
               targets: Iterable[str] = ("q", "k", "v"), dropout: float = 0.0) -> list[nn.Parameter]:
    """Freeze ``model`` and put :class:`LoRAMultiheadAttention` in place of every ``nn.MultiheadAttention`` under the
    named submodules (open_clip's CLIP: ``visual``, the image tower, and ``transformer``, the text tower), and
    :class:`LoRAAttentionPool` in place of a ResNet tower's attention pool. Returns the new trainable parameters; a
    tower with no attention at all is an error naming it."""
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for tower in towers:
        root = model.get_submodule(tower)
        found = [(name, m) for name, m in root.named_modules()
                 if isinstance(m, nn.MultiheadAttention) or _is_attention_pool(m)]
        if not found:
            raise ValueError(f"{tower} ({type(root).__name__}) has no attention layer (nn.MultiheadAttention or an "
                             f"attention pool) for LoRA")
        for name, module in found:
            if not name:
                raise ValueError(f"{tower} is itself an attention layer; name the tower that holds it")
            parent_name, _, child = name.rpartition(".")
            if isinstance(module, nn.MultiheadAttention):
                wrapped = LoRAMultiheadAttention(module, rank, alpha, targets, dropout)
            else:
                wrapped = LoRAAttentionPool(module, rank, alpha, targets)
            setattr(root.get_submodule(parent_name) if parent_name else root, child, wrapped)
            params += [*wrapped.lora_a.values(), *wrapped.lora_b.values()]
    return params
