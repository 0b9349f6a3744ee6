"""CLIP-LoRA (Zanella and Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024), written
out: low-rank adapters on the attention projections of both CLIP towers, the rest frozen.

:func:`apply_lora` replaces every ``nn.MultiheadAttention`` under the chosen towers (open_clip's ViT image tower and
its text transformer) with :class:`LoRAMultiheadAttention`, which computes the same attention from the original
module's frozen weights plus ``scale * B @ A`` on the query, key, value (and optionally output) projections. ``B``
starts at zero, so until training moves it the model is the base model; ``A`` starts as in LoRA (Kaiming-uniform).
The paper's setting: rank 2, alpha 1, query/key/value, every layer of both towers.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

PROJECTIONS = ("q", "k", "v", "o")


class LoRAMultiheadAttention(nn.Module):
    """``base`` (an ``nn.MultiheadAttention`` with packed, equal-size projections; kept frozen) plus low-rank updates
    of the ``targets`` projections. Called like ``base``; attention weights are returned only when asked for."""

    def __init__(self, base: nn.MultiheadAttention, rank: int = 2, alpha: float = 1.0,
                 targets: Iterable[str] = ("q", "k", "v"), dropout: float = 0.0):
        super().__init__()
        targets = tuple(targets)
        if not base._qkv_same_embed_dim or base.in_proj_weight is None:
            raise ValueError("LoRA needs an nn.MultiheadAttention with packed query/key/value projections")
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        unknown = [t for t in targets if t not in PROJECTIONS]
        if unknown or not targets:
            raise ValueError(f"targets {list(targets)} must be some of {PROJECTIONS}")
        self.base = base.requires_grad_(False)
        self.batch_first, self.num_heads = base.batch_first, base.num_heads
        self.rank, self.scale, self.targets = rank, alpha / rank, targets
        E = base.embed_dim
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        for t in targets:
            a = torch.empty(rank, E, device=base.in_proj_weight.device, dtype=base.in_proj_weight.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_a[t] = nn.Parameter(a)
            self.lora_b[t] = nn.Parameter(torch.zeros(E, rank, device=a.device, dtype=a.dtype))
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


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: not allowed) as 0 / -inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def apply_lora(model: nn.Module, towers: Iterable[str] = ("visual", "transformer"), rank: int = 2, alpha: float = 1.0,
               targets: Iterable[str] = ("q", "k", "v"), dropout: float = 0.0) -> list[nn.Parameter]:
    """Freeze ``model`` and put :class:`LoRAMultiheadAttention` in place of every ``nn.MultiheadAttention`` under the
    named submodules (open_clip's CLIP: ``visual``, the image tower, and ``transformer``, the text tower). Returns
    the new trainable parameters; a tower without multi-head attention (a ResNet's) is an error naming it."""
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for tower in towers:
        root = model.get_submodule(tower)
        found = [(name, m) for name, m in root.named_modules() if isinstance(m, nn.MultiheadAttention)]
        if not found:
            raise ValueError(f"{tower} ({type(root).__name__}) has no nn.MultiheadAttention for LoRA")
        for name, module in found:
            parent_name, _, child = name.rpartition(".")
            wrapped = LoRAMultiheadAttention(module, rank, alpha, targets, dropout)
            setattr(root.get_submodule(parent_name) if parent_name else root, child, wrapped)
            params += [*wrapped.lora_a.values(), *wrapped.lora_b.values()]
    return params
