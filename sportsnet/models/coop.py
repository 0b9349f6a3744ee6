"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022), written out for open_clip's CLIP:
the words before the class name in the prompt become learned vectors in the text encoder's input.

The prompt of class ``c`` is ``[SOT] v_1 ... v_m <name of c> . [EOT]``: the ``v`` are parameters (one set shared by
all classes, "unified", or one per class, "class-specific"), everything else is the frozen model. Initialised
from words (``init="a photo of a"``: the ``v`` are those words' token embeddings) the prompts are the hand prompt
``"a photo of a {}."`` exactly, so before training CoOp is that prompt's zero-shot classifier. Only the text side
learns: images are scored as cached, unit-norm features.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: The word standing in for each learned vector when the context starts random (any single-token word works: only
#: its position is used).
PLACEHOLDER = "X"


class CoOp(nn.Module):
    """Learned prompt context over ``classnames`` for an open_clip ``CLIP`` ``model`` and its ``tokenizer``.

    Args:
        init: words to start the context from (their count is the context length), or None for ``n_ctx``
            random vectors (normal, std 0.02, as CoOp).
        class_specific: one context per class instead of one shared by all.
        logit_scale: the scale of the logits (default: the model's learned one).
        generator: seeds the random context.
    ``forward(image_features)`` takes unit-norm ``(B, D)`` image features and returns ``(B, C)`` logits; the model's
    parameters are frozen (``requires_grad=False``), only :attr:`ctx` trains.
    """

    def __init__(self, model: nn.Module, tokenizer, classnames: Sequence[str], *, init: str | None = "a photo of a",
                 n_ctx: int = 4, class_specific: bool = False, logit_scale: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if not hasattr(model, name):
                raise TypeError(f"CoOp needs open_clip's CLIP text tower; {type(model).__name__} has no {name}")
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise TypeError(f"CoOp reads the end-of-text token as CLIP does (text_pool_type 'argmax'); this model "
                            f"pools {model.text_pool_type!r}")
        if not classnames:
            raise ValueError("classnames is empty")
        if init is not None:
            words = tokenizer([init])[0]
            n_ctx = int((words != 0).sum()) - 2  # without the start and end tokens
            if n_ctx < 1:
                raise ValueError(f"init={init!r} has no words")
        elif n_ctx < 1:
            raise ValueError(f"n_ctx={n_ctx} must be >= 1")
        prefix = init if init is not None else " ".join([PLACEHOLDER] * n_ctx)
        tokens = tokenizer([f"{prefix} {name}." for name in classnames])
        if (tokens[:, -1] != 0).any():
            raise ValueError(f"a prompt is longer than the text encoder's {tokens.shape[1]} tokens")
        self.model = model.requires_grad_(False)
        device = next(model.parameters()).device
        tokens = tokens.to(device)
        with torch.no_grad():
            embeds = model.token_embedding(tokens)  # (C, L, W)
        self.register_buffer("tokens", tokens)
        self.register_buffer("embeds", embeds)
        self.n_ctx = n_ctx
        if init is not None:
            ctx = embeds[0, 1:1 + n_ctx].clone()
        else:
            ctx = torch.randn(n_ctx, embeds.shape[-1], generator=generator).to(embeds) * 0.02
        self.ctx = nn.Parameter(ctx.expand(len(classnames), -1, -1).clone() if class_specific else ctx)
        scale = model.logit_scale.exp().item() if logit_scale is None else logit_scale
        self.logit_scale = float(scale)

    def text_features(self) -> torch.Tensor:
        """``(C, D)`` unit-norm class embeddings of the current prompts (what open_clip's ``encode_text`` does, with
        the context vectors in place of the prompt's first words)."""
        m = self.model
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.expand(len(self.tokens), -1, -1)
        x = torch.cat([self.embeds[:, :1], ctx, self.embeds[:, 1 + self.n_ctx:]], dim=1)
        cast = m.transformer.get_cast_dtype()
        x = x.to(cast) + m.positional_embedding.to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), self.tokens.argmax(dim=-1)]  # the end-of-text tokens
        x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return F.normalize(x.float(), dim=-1)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * image_features.float() @ self.text_features().T
