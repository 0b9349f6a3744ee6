"""The transformer-native methods (sportsnet.cam.attention): LeGrad against torchcam's, rollout and gradient
rollout against their formulas on attention computed by an independent forward, on torchvision, timm and
open_clip towers (both kinds of open_clip block), under autocast, and the model left as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer

from sportsnet.cam import AttentionRollout, GradientRollout, LeGrad, make_explainer
from sportsnet.cam.attention import AttentionTap, find_tower
from tests.support import clip_tiny


def tiny_vit(layers: int = 3, classes: int = 5) -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=32, mlp_dim=64,
                          num_classes=classes).eval()
    nn.init.normal_(m.heads.head.weight)  # torchvision starts the head at zero: every gradient would be 0
    return m


def upsampled(grid: torch.Tensor, size=(32, 32)) -> torch.Tensor:
    """(B, h, w) -> (B, H, W): bilinear, then min-max normalised, as our maps are made."""
    m = F.interpolate(grid[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    return (m - lo) / (hi - lo)


def attention_by_hand(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torchvision's ViT forward written out, each block's attention probabilities from an explicit softmax:
    ``(logits, [(B, heads, N, N)] per block)``, in the graph."""
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], dim=1) + model.encoder.pos_embedding
    probs = []
    for block in model.encoder.layers:
        a = block.self_attention
        y = block.ln_1(tokens)
        q, k, v = (t.unflatten(-1, (a.num_heads, -1)).transpose(1, 2)
                   for t in F.linear(y, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1))
        p = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        probs.append(p)
        tokens = tokens + a.out_proj((p @ v).transpose(1, 2).flatten(2))
        tokens = tokens + block.mlp(block.ln_2(tokens))
    return model.heads(model.encoder.ln(tokens)[:, 0]), probs


def test_legrad_matches_torchcam_on_a_torchvision_vit():
    from torchcam.methods import LeGrad as TorchcamLeGrad

    model, x, y = tiny_vit(), torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 4])
    for blocks in (list(model.encoder.layers)[-2:], list(model.encoder.layers)):
        with TorchcamLeGrad(model, blocks) as extractor:
            model(x)
            reference = upsampled(extractor(y.tolist())[0])
        with LeGrad(model, target_layer=blocks) as cam:
            out = cam(x, targets=y)
        torch.testing.assert_close(out.maps[:, 0], reference, atol=1e-4, rtol=0)
    with LeGrad(model) as cam:  # the default: the last two blocks, as LeGrad's code
        assert cam.target_layers == ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_2"]


def test_rollout_and_gradient_rollout_match_their_formulas_on_attention_computed_by_hand():
    model, x = tiny_vit(), torch.randn(2, 3, 32, 32)
    x.requires_grad_(True)
    logits, probs = attention_by_hand(model, x)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    classes = logits.detach().topk(2, dim=1).indices
    N, eye = probs[0].shape[-1], torch.eye(probs[0].shape[-1])

    R = eye.expand(2, N, N)
    for p in probs:  # Abnar and Zuidema: heads averaged, half identity, rows renormalised
        a = (p.detach().mean(1) + eye) / 2
        R = a / a.sum(-1, keepdim=True) @ R
    with AttentionRollout(model) as cam:
        out = cam(x.detach(), top_k=2)
    expected = upsampled(R[:, 0, 1:].reshape(2, 4, 4))
    torch.testing.assert_close(out.maps[:, 0], expected, atol=1e-4, rtol=0)
    assert torch.equal(out.maps[:, 0], out.maps[:, 1])  # class-agnostic

    with GradientRollout(model) as cam:
        out = cam(x.detach(), top_k=2)
    for k in range(2):  # Chefer et al. 2021: R <- R + mean_h((dA * A)^+) R
        grads = torch.autograd.grad(logits.gather(1, classes[:, k:k + 1]).sum(), probs, retain_graph=True)
        R = eye.expand(2, N, N)
        for p, g in zip(probs, grads):
            R = R + (g * p).clamp_min(0).mean(1) @ R
        torch.testing.assert_close(out.maps[:, k], upsampled(R[:, 0, 1:].reshape(2, 4, 4)), atol=1e-4, rtol=0)
    assert not torch.equal(out.maps[:, 0], out.maps[:, 1])


def module_state(model: nn.Module):
    return ([(m.training, len(m._forward_hooks), len(m._forward_pre_hooks), getattr(m, "fused_attn", None))
             for m in model.modules()], [p.requires_grad for p in model.parameters()])


def timm_vit():
    timm = pytest.importorskip("timm", reason="timm comes with open_clip")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5,
                             depth=2).eval()


def test_the_taps_change_no_output_and_leave_the_model_as_it_was():
    model = timm_vit()
    model.blocks[0].train()  # a mixed train/eval state and a trainable parameter, to be restored exactly
    model.head.weight.requires_grad_(True)
    before = module_state(model)
    x = torch.randn(2, 3, 32, 32)
    tower = find_tower(model)
    assert tower.prefix_tokens == 1 and tower.blocks == ["blocks.0", "blocks.1"]
    model.eval()
    with AttentionTap(model, tower.blocks, tower.batch_first, tokens=True) as tap:
        tapped = model(x)
        assert not any(a.fused_attn for a in tap.attentions)  # timm's unfused path, for this call only
    torch.testing.assert_close(tapped, model(x), atol=1e-5, rtol=0)
    assert [p.shape for p in tap.checked()] == [(2, 3, 17, 17)] * 2
    model.blocks[0].train()
    for method in ("legrad", "rollout", "gradient-rollout"):
        with make_explainer(model, method) as cam:
            out = cam(x, top_k=2)
        assert torch.isfinite(out.maps).all() and out.maps.amax() > 0.99, method
        assert module_state(model) == before, method

    def broken(tokens):
        raise RuntimeError("a score projection that fails")

    with pytest.raises(RuntimeError, match="fails"):
        with LeGrad(model, score_projection=broken) as cam:
            cam(x)
    assert module_state(model) == before  # hooks gone, fused_attn back on, modes and flags restored


def test_only_the_blocks_a_method_reads_give_up_their_fused_attention():
    model, computed = tiny_vit(layers=4), []
    # Registered before the explainer's taps, these hooks see each block's attention output as computed:
    # per-head weights where a tap asked for them (the unfused path), None where the block stayed fused.
    handles = [b.self_attention.register_forward_hook(
        lambda m, args, out, i=i: computed.append((i, out[1] is not None))) for i, b in enumerate(model.encoder.layers)]
    with LeGrad(model) as cam:
        cam(torch.randn(1, 3, 32, 32))
    # The first forward picks the classes (every block fused); LeGrad's own taps the last two blocks only.
    assert computed == [(0, False), (1, False), (2, False), (3, False), (0, False), (1, False), (2, True), (3, True)]
    for h in handles:
        h.remove()
    block = model.encoder.layers[3].self_attention
    x = torch.randn(1, 17, 32)
    with AttentionTap(model, ["encoder.layers.encoder_layer_3"], True) as tap:
        out, weights = block(x, x, x)  # a caller asking for averaged weights gets them, as without the tap
        assert block(x, x, x, need_weights=False)[1] is None
    expected_out, expected_weights = block(x, x, x)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(out, expected_out)
    assert tap.probs[0].shape == (1, 2, 17, 17)


@clip_tiny.needs_open_clip
@pytest.mark.parametrize("custom", [False, True], ids=["MultiheadAttention", "open_clip-Attention"])
def test_open_clip_vit_towers_with_text_targets_under_autocast(custom):
    """open_clip's standard blocks (nn.MultiheadAttention) and its custom ones (its own Attention, QK norm and
    head scales): a zero-shot classifier over free-text prompts, each method in float32 and under bf16
    autocast; the maps agree and depend on the prompt."""
    from open_clip.transformer import VisionTransformer as OpenClipViT

    torch.manual_seed(0)
    options = dict(qk_norm=True, scale_heads=True, scale_attn_inner=True) if custom else {}
    tower = OpenClipViT(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2, output_dim=16,
                        **options).eval()
    assert type(tower.transformer.resblocks[0]).__name__ == ("CustomResidualAttentionBlock" if custom
                                                             else "ResidualAttentionBlock")
    from sportsnet.models.zero_shot import ZeroShotClassifier

    prompts = F.normalize(torch.randn(16, 3), dim=0)  # three text embeddings: "prompts" as CLIP's classifier holds
    holder = nn.Module()
    holder.visual, holder.logit_scale = tower, nn.Parameter(torch.tensor(3.9))
    clf = ZeroShotClassifier(holder, prompts, classes=["a", "b", "c"]).eval()
    x = torch.randn(2, 3, 32, 32)
    with AttentionTap(clf, find_tower(clf).blocks, True):
        tapped = clf(x)
    torch.testing.assert_close(tapped, clf(x), atol=1e-4, rtol=0)
    targets = torch.tensor([[0, 2], [1, 2]])
    for method in ("legrad", "rollout", "gradient-rollout"):
        with make_explainer(clf, method) as cam:
            exact = cam(x, targets=targets).maps
        with torch.autocast("cpu", dtype=torch.bfloat16), make_explainer(clf, method) as cam:
            fast = cam(x, targets=targets).maps
        assert torch.isfinite(fast).all() and fast.amin() >= 0 and fast.amax() <= 1, method
        assert (fast - exact).abs().mean() < 0.1, method
        if method != "rollout":
            assert not torch.allclose(exact[:, 0], exact[:, 1], atol=1e-3), method  # the prompt matters


def test_refusals_name_what_is_wrong():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="Sequential holds no vision transformer"):
        LeGrad(cnn)
    model = tiny_vit()
    with pytest.raises(ValueError, match=r"target layers \['encoder.ln'\] are not transformer blocks"):
        GradientRollout(model, target_layer="encoder.ln")
    wrapped = nn.Sequential(model)  # the head after the tower is not known: LeGrad needs score_projection
    with pytest.raises(ValueError, match="pass score_projection="):
        with LeGrad(wrapped) as cam:
            cam(torch.randn(1, 3, 32, 32))
    with AttentionRollout(wrapped) as cam:  # rollout needs no head
        assert cam(torch.randn(1, 3, 32, 32)).maps.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="head_fusion='median' is not one of"):
        AttentionRollout(model, head_fusion="median")
