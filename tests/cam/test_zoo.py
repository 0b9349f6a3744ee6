"""Explanations on models no one here wrote: 18 torchvision and timm architectures (CNNs, channels-last
Swin and MambaOut stages, ViTs with 1, 2 and 4 prefix tokens), seeded random weights, heads that are not
zero, 64 px inputs (56 for EVA-02's 14 px patches), each family's default target layer.

For every method pytorch-grad-cam also has, our maps equal its maps given its documented
``reshape_transform`` (we are given nothing: the layout is resolved from the model), within 1e-4, or
within what float32 rounding allows for that map: 1e-4 plus twice the op's proven error bound
(tests/support/op_bounds.py), which only matters for maps that are a small difference of large terms
(HiResCAM on a 2 x 2 stage, say), where neither library's float32 map is the exact one. The
differences that remain are definitions, each tested for ours: DenseNet's in-place ReLU after the target
layer, Eigen-CAM's sign, Score-CAM's resize order, Ablation-CAM's prefix tokens.

BatchNorm statistics are set by two training-mode forwards of random images: with the initial running
statistics, torchvision's MobileNetV3 and EfficientNet give logits of 1e-10 to 1e-14 at this size, whose
maps test only the normalisation's eps (tested on its own, in test_explainer.py).
"""
from __future__ import annotations

import pytest
import pytorch_grad_cam as pgc  # the test extra (setup.py); timm comes with open-clip-torch
import timm
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction
from torch import nn

from sportsnet.cam import LAYOUTS, AblationCAM, EigenCAM, ScoreCAM, default_target_layer, make_explainer
from sportsnet.ops import gradcam_reference
from tests.support.op_bounds import error_bound

tv = torchvision.models
GRADIENT_METHODS = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
                    "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM, "gradcam-elementwise": pgc.GradCAMElementWise}
CLASSES = torch.tensor([1, 3])


def channels_last_to_maps(t):
    """pytorch-grad-cam's reshape_transform for Swin-style (B, h, w, C) stages."""
    return t.permute(0, 3, 1, 2)


def tokens_to_maps(prefix):
    """pytorch-grad-cam's reshape_transform for ViTs (its tutorial's, with the model's prefix count)."""
    def reshape(t):
        n = t.shape[1] - prefix
        g = round(n ** 0.5)
        return t[:, prefix:].reshape(t.shape[0], g, g, t.shape[2]).permute(0, 3, 1, 2)
    return reshape


# id: (builder, input side, expected default layer, expected layout, prefix tokens, pytorch-grad-cam reshape)
ZOO = {
    "tv-resnet18": (lambda: tv.resnet18(), 64, "layer4", "BCHW", 0, None),
    # A copying reshape makes pytorch-grad-cam keep norm5's output before torchvision's in-place ReLU, as we
    # do (test_densenet_in_place_relu below).
    "tv-densenet121": (lambda: tv.densenet121(), 64, "features", "BCHW", 0, torch.clone),
    "tv-mobilenet_v3_large": (lambda: tv.mobilenet_v3_large(), 64, "features", "BCHW", 0, None),
    "tv-efficientnet_b0": (lambda: tv.efficientnet_b0(), 64, "features", "BCHW", 0, None),
    "tv-regnet_y_400mf": (lambda: tv.regnet_y_400mf(), 64, "trunk_output", "BCHW", 0, None),
    "tv-convnext_tiny": (lambda: tv.convnext_tiny(), 64, "features", "BCHW", 0, None),
    "tv-swin_t": (lambda: tv.swin_t(), 64, "features", "BHWC", 0, channels_last_to_maps),
    "tv-vit_b_16": (lambda: tv.vit_b_16(image_size=64), 64, "encoder.layers.encoder_layer_11.ln_1", "BND", 1,
                    tokens_to_maps(1)),
    "timm-resnet18d": (lambda: timm.create_model("resnet18d"), 64, "layer4", "BCHW", 0, None),
    "timm-efficientnet_b0": (lambda: timm.create_model("efficientnet_b0"), 64, "blocks.6", "BCHW", 0, None),
    "timm-convnext_atto": (lambda: timm.create_model("convnext_atto"), 64, "stages.3", "BCHW", 0, None),
    "timm-maxvit_rmlp_pico": (lambda: timm.create_model("maxvit_rmlp_pico_rw_256", img_size=64), 64, "stages.3",
                              "BCHW", 0, None),
    "timm-swin_tiny": (lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=64), 64, "layers.3",
                       "BHWC", 0, channels_last_to_maps),
    "timm-mambaout_femto": (lambda: timm.create_model("mambaout_femto"), 64, "stages.3", "BHWC", 0,
                            channels_last_to_maps),
    "timm-vit_tiny": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=64), 64, "blocks.11.norm1", "BND",
                      1, tokens_to_maps(1)),
    "timm-deit_tiny_distilled": (lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=64), 64,
                                 "blocks.11.norm1", "BND", 2, tokens_to_maps(2)),
    "timm-vit_medium_reg4_gap": (lambda: timm.create_model("vit_medium_patch16_reg4_gap_256", img_size=64), 64,
                                 "blocks.11.norm1", "BND", 4, tokens_to_maps(4)),
    "timm-eva02_tiny": (lambda: timm.create_model("eva02_tiny_patch14_224", img_size=56), 56, "blocks.11.norm1",
                        "BND", 1, tokens_to_maps(1)),
}


def seeded(build, side: int) -> nn.Module:
    """The architecture with seeded random weights, BatchNorm statistics from two training-mode forwards
    of random images, and a head of N(0, 0.1) weights (torchvision's ViT starts with a zero head), in eval
    mode."""
    torch.manual_seed(0)
    model = build()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(4, 3, side, side))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.normal_(0, 0.1)
        head.bias.zero_()
    # Frozen: pytorch-grad-cam's full backward then computes no weight gradients (the inputs it is given
    # require grad instead, so its hooks still see the activations' gradients); ours freezes them anyway.
    return model.eval().requires_grad_(False)


def images(side: int) -> torch.Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def theirs(cls, model, layer, x, reshape):
    with cls(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(input_tensor=x.detach().requires_grad_(True),
                                    targets=[ClassifierOutputTarget(int(c)) for c in CLASSES]))


def captured(model, layer_name, x):
    """The target layer's output and the gradient of the targets' logits sum with respect to it."""
    store = {}

    def keep(module, inputs, output):
        store["a"] = output
        return output.clone()  # the rest of the network gets a copy: an in-place op after the layer spares ours

    handle = model.get_submodule(layer_name).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))  # the weights are frozen (seeded)
            grad, = torch.autograd.grad(logits[torch.arange(len(x)), CLASSES].sum(), store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), grad


def their_eps_factor(A, G, size, method) -> torch.Tensor:
    """``(B,)``: pytorch-grad-cam's map over ours. It normalises with an absolute eps, twice: (x - min) /
    (max - min + 1e-7) before resizing, then again after. For a map whose raw range S is far above 1e-7
    that is ours to 1e-7; for a tiny one (Grad-CAM++ of a ViT whose gradients are ~1e-5: its alpha's 1e-6
    constant makes the map ~1e-12) its result is ours times s / (s + 1e-7), s = S / (S + 1e-7). Ours is
    scale-invariant (a relative eps, test_explainer.py), so this is the whole difference."""
    raw = gradcam_reference(A.double(), G.double(), size, method=method, normalize=False)
    S = raw.amax((1, 2)) - raw.amin((1, 2))
    s = S / (S + 1e-7)
    return (s / (s + 1e-7)).float()


@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo_maps_match_pytorch_grad_cam(arch):
    build, side, layer, kind, prefix, reshape = ZOO[arch]
    model, x = seeded(build, side), images(side)
    assert default_target_layer(model) == layer
    module = model.get_submodule(layer)
    a, g = captured(model, layer, x)
    for method, cls in GRADIENT_METHODS.items():
        with make_explainer(model, method) as cam:
            mine = cam(x, targets=CLASSES).maps[:, 0]
            resolved = cam.layouts[layer]
        assert (resolved.kind, resolved.prefix_tokens) == (kind, prefix), resolved
        A, G = resolved.to_maps(a, layer, (side, side)), resolved.to_maps(g, layer, (side, side))
        tolerance = 1e-4 + 2 * error_bound(A, G, (side, side), method)
        expected = mine * their_eps_factor(A, G, (side, side), method)[:, None, None]
        gap = (expected - theirs(cls, model, module, x, reshape)).abs().flatten(1).amax(1)
        assert (gap <= tolerance).all(), (method, gap.tolist(), tolerance.tolist())
    # Eigen-CAM: pytorch-grad-cam's EigenCAM with its own sign correction, through its whole pipeline.
    class SignCorrectedEigenCAM(pgc.EigenCAM):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
            return get_2d_projection_with_sign_correction(activations)

    with EigenCAM(model) as cam:
        mine = cam(x).maps[:, 0]
    assert (mine - theirs(SignCorrectedEigenCAM, model, module, x, reshape)).abs().max() <= 1e-4


def test_the_zoo_covers_what_it_claims():
    kinds = [v[3] for v in ZOO.values()]
    prefixes = {v[4] for v in ZOO.values() if v[3] == "BND"}
    assert len(ZOO) >= 14 and set(kinds) == {"BCHW", "BHWC", "BND"} and {1, 2, 4} <= prefixes
    assert set(kinds) <= set(LAYOUTS)


def test_densenet_in_place_relu():
    """Ours is the target layer's output as the layer returned it: DenseNet's norm5, before the
    ``F.relu(..., inplace=True)`` torchvision's forward applies next. pytorch-grad-cam's stored activation
    is that tensor, rectified in place after its hook ran; given a copying reshape_transform it keeps the
    layer's output too and agrees with ours (the zoo test), and without one it differs."""
    build, side = ZOO["tv-densenet121"][:2]
    model, x = seeded(build, side), images(side)
    with make_explainer(model, "gradcam") as cam:
        mine = cam(x, targets=CLASSES).maps[:, 0]
    a, g = captured(model, "features", x)
    assert a.min() < 0  # norm5's output has negative values, which the in-place ReLU would zero
    torch.testing.assert_close(mine, gradcam_reference(a, g, (side, side)), atol=1e-5, rtol=0)
    aliased = theirs(pgc.GradCAM, model, model.features, x, None)
    assert (aliased - mine).abs().max() > 0.05
    torch.testing.assert_close(aliased, gradcam_reference(a.relu(), g, (side, side)), atol=1e-4, rtol=0)


def test_scorecam_matches_torchcam_on_a_zoo_cnn():
    """Score-CAM with torchcam's order (each channel scaled to [0, 1] at the layer's resolution, then
    upsampled); pytorch-grad-cam upsamples first, a documented difference (test_methods.py tests ours)."""
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    build, side = ZOO["timm-convnext_atto"][:2]
    model, x = seeded(build, side), images(side)
    with ScoreCAM(model, precision="fp32") as cam:
        mine = cam(x, targets=CLASSES).maps[:, 0]
    with TorchcamScoreCAM(model, target_layer="stages.3", input_shape=(3, side, side)) as extractor:
        with torch.no_grad():
            scores = model(x)
        small = extractor(class_idx=CLASSES.tolist(), scores=scores, normalized=False)[0]
    theirs_maps = gradcam_reference(small[:, None], torch.ones_like(small[:, None]), (side, side), method="hirescam")
    assert (mine - theirs_maps).abs().max() <= 1e-4


def test_ablationcam_matches_pytorch_grad_cam_after_a_relu():
    """On a post-ReLU stage (RegNet's blocks end in a ReLU) pytorch-grad-cam zeroes an ablated channel, as
    we do, and the maps agree (in float32: precision="auto" means float32 for this method)."""
    build, side = ZOO["tv-regnet_y_400mf"][:2]
    model, x = seeded(build, side), images(side)[:1]
    with AblationCAM(model) as cam:
        mine = cam(x, targets=CLASSES[:1]).maps[:, 0]
    with pgc.AblationCAM(model=model, target_layers=[model.trunk_output], batch_size=128) as cam:
        reference = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(CLASSES[0]))]))
    assert (mine - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["timm-mambaout_femto", "timm-deit_tiny_distilled"])
def test_ablationcam_zeroes_a_channel_where_its_map_reads_it(arch):
    """Channels-last: the last axis; tokens: the patch tokens only (the class and distillation tokens are
    not part of the map and keep their values; pytorch-grad-cam's AblationLayerVit zeroes them too, and
    ablates to min - 1e7 on layers that are not after a ReLU). Checked against full forwards with the
    channel zeroed by hand, for a few channels."""
    build, side, layer, kind, prefix, _ = ZOO[arch]
    model, x = seeded(build, side), images(side)[:1]
    with AblationCAM(model) as cam:
        cam(x, targets=CLASSES[:1])
        layout = cam.layouts[layer]
        a, _ = captured(model, layer, x)
        A = layout.to_maps(a, layer, (side, side))
        with torch.no_grad():
            original = model(x)[0, CLASSES[0]]
        drops = cam.score_drops(x, (layer, model.get_submodule(layer)), a, A, CLASSES[:1, None], original.view(1, 1))
    for c in (0, 5, A.shape[1] - 1):
        def zero(module, inputs, output, c=c):
            output = output.clone()
            if kind == "BHWC":
                output[..., c] = 0
            else:
                output[:, prefix:, c] = 0
            return output

        handle = model.get_submodule(layer).register_forward_hook(zero)
        with torch.no_grad():
            ablated = model(x)[0, CLASSES[0]]
        handle.remove()
        torch.testing.assert_close(drops[0, c, 0], original - ablated, atol=1e-4, rtol=1e-3)
