"""CLIP-LoRA on a tiny open_clip ViT CLIP: with the up-projections at zero the model is the base model exactly as it
computes (both towers, causal text mask included); the adapters alone train; nn.MultiheadAttention's own answers
(attention weights, masks, sequence-first inputs) are kept."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.clip_tiny import needs_open_clip, register


@pytest.fixture(scope="module")
def base():
    from sportsnet.models.clip import load_clip

    register()
    torch.manual_seed(0)
    return load_clip("tiny-vit-test", "none")


@needs_open_clip
def test_up_projections_at_zero_are_the_base_model_and_training_moves_only_the_adapters(base):
    from sportsnet.models.lora import LoRAMultiheadAttention, apply_lora

    model = copy.deepcopy(base.model).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    text = base.tokenizer(["a photo of archery.", "surfing", "a red disc on a lawn"])
    with torch.no_grad():
        want_i, want_t = model.encode_image(images), model.encode_text(text)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    params = apply_lora(model, rank=2, alpha=1.0)
    wrapped = [m for m in model.modules() if isinstance(m, LoRAMultiheadAttention)]
    assert len(wrapped) == 2 + 1  # the tiny ViT's two blocks, the text tower's one
    assert len(params) == 3 * 2 * len(wrapped) and all(p.requires_grad for p in params)
    assert [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n] == []
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), want_i, atol=1e-5)
        assert torch.allclose(model.encode_text(text), want_t, atol=1e-5)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    labels = torch.arange(3)
    for _ in range(5):
        optimizer.zero_grad()
        logits = F.normalize(model.encode_image(images), dim=-1) @ F.normalize(model.encode_text(text), dim=-1).T
        F.cross_entropy(20 * logits, labels).backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model.encode_text(text), want_t, atol=1e-3)  # the adapters act
    merged = {k.replace("base.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], merged[k]) for k in frozen)  # the base weights never moved


@needs_open_clip
@pytest.mark.parametrize("batch_first", [True, False])
def test_it_answers_as_nn_multihead_attention_does(batch_first):
    from sportsnet.models.lora import LoRAMultiheadAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    lora = LoRAMultiheadAttention(copy.deepcopy(mha), rank=3, targets=("q", "k", "v", "o")).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    for kwargs in ({}, {"attn_mask": causal}, {"key_padding_mask": padding},
                   {"attn_mask": torch.zeros(5, 5).masked_fill(causal, float("-inf"))}):
        for need in (False, True):
            want = mha(x, x, x, need_weights=need, **kwargs)
            got = lora(x, x, x, need_weights=need, **kwargs)
            assert torch.allclose(got[0], want[0], atol=1e-5), kwargs
            assert (got[1] is None) == (want[1] is None) and (got[1] is None or torch.allclose(got[1], want[1],
                                                                                                 atol=1e-6))
    with torch.no_grad():
        lora.lora_b["v"].normal_()
    assert not torch.allclose(lora(x, x, x)[0], mha(x, x, x)[0], atol=1e-3)


@needs_open_clip
def test_bad_input_is_named(base):
    from sportsnet.models.lora import LoRAMultiheadAttention, apply_lora

    with pytest.raises(ValueError, match="rank=0 must be >= 1"):
        LoRAMultiheadAttention(nn.MultiheadAttention(8, 2), rank=0)
    with pytest.raises(ValueError, match=r"targets \['z'\] must be some of"):
        LoRAMultiheadAttention(nn.MultiheadAttention(8, 2), targets=["z"])
    with pytest.raises(ValueError, match=r"ln_final \(LayerNorm\) has no attention layer"):
        apply_lora(copy.deepcopy(base.model), towers=("ln_final",))


@needs_open_clip
def test_a_resnet_image_towers_attention_pool_is_adapted_and_starts_as_the_base():
    """open_clip's ModifiedResNet has one attention layer, its attention pool: LoRA adapts its q/k/v, the base
    pool's answer is kept to 1e-5 until training moves the up-projections, and then it changes."""
    from sportsnet.models.clip import load_clip
    from sportsnet.models.lora import LoRAAttentionPool, apply_lora

    register()
    torch.manual_seed(0)
    model = load_clip("tiny-rn-test", "none").model.eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.encode_image(images)
    params = apply_lora(model, towers=("visual",), rank=2)
    assert isinstance(model.visual.attnpool, LoRAAttentionPool) and len(params) == 6
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), want, atol=1e-5)
        model.visual.attnpool.lora_b["v"].normal_()
        assert not torch.allclose(model.encode_image(images), want, atol=1e-3)
    assert [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n] == []
    with pytest.raises(ValueError, match="adapts square projections only"):
        LoRAAttentionPool(model.visual.attnpool.base, targets=("q", "o"))
