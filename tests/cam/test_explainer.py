"""sportsnet.cam's gradient-weighted explainers: maps, targets, model state, hooks, layouts (token sequences,
channels-last stages, given or refused), scale invariance, errors."""
import gc
import warnings
import weakref

import pytest
import torch
from torch import nn

from sportsnet.cam import GradCAM, GradCAMPlusPlus, default_target_layer, make_explainer
from sportsnet.cam.layouts import Layout
from sportsnet.models import sports_vgg19
from sportsnet.models.clip import load_clip
from sportsnet.models.zero_shot import ZeroShotClassifier
from sportsnet.ops import METHODS, gradcam_reference
from tests.support import clip_tiny


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = sports_vgg19("reduce256-two-phase", num_classes=6, width=0.125, batch_norm=True)
    with torch.no_grad():  # non-trivial running statistics, so eval mode matters
        m.train()(torch.randn(8, 3, 64, 64))
    return m


@pytest.fixture
def images():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def hand_captured(model, images, layer, classes):
    """Activations and gradients the plain way: a hook that keeps the output, a full backward."""
    store = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        model.eval()
        logits = model(images)
        store["a"].retain_grad()
        logits.gather(1, classes[:, None]).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return store["a"].detach(), store["a"].grad


@pytest.mark.parametrize("method", METHODS)
def test_maps_equal_the_reference_epilogue_on_hand_captured_tensors(model, images, method):
    layer = default_target_layer(model)
    with make_explainer(model, method) as cam:
        out = cam(images)
    acts, grads = hand_captured(model, images, layer, out.classes[:, 0])
    expected = gradcam_reference(acts, grads, (64, 64), method=method)
    assert out.maps.shape == (4, 1, 64, 64) and out.maps.dtype == torch.float32
    torch.testing.assert_close(out.maps[:, 0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.scores[:, 0], out.logits.softmax(1).amax(1))


def test_top_k_equals_k_separate_calls(model, images):
    cam = GradCAM(model)
    top = cam(images, top_k=3)
    assert top.classes.shape == (4, 3) and top.maps.shape == (4, 3, 64, 64)
    assert torch.equal(top.classes, top.logits.topk(3, dim=1).indices)
    for k in range(3):
        single = cam(images, targets=top.classes[:, k])
        torch.testing.assert_close(single.maps[:, 0], top.maps[:, k], atol=1e-6, rtol=0)
    two_d = cam(images, targets=top.classes)
    torch.testing.assert_close(two_d.maps, top.maps, atol=1e-6, rtol=0)


def test_no_parameter_grad_is_touched_and_state_is_restored(model, images):
    model.train()
    model.head.eval()  # a mixed state must come back exactly
    for p in model.features[:10].parameters():
        p.requires_grad_(False)
    sentinel = torch.full_like(model.head[-1].weight, 7.0)
    model.head[-1].weight.grad = sentinel
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    GradCAMPlusPlus(model)(images, top_k=2)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.head[-1].weight.grad is sentinel and torch.equal(sentinel, torch.full_like(sentinel, 7.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.5.weight")


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_state_and_hooks_survive_an_exception(model, images):
    model.train()
    before = hook_count(model)
    with pytest.raises(ValueError, match="class index 9 is out of range for a model with 6 classes"):
        with GradCAM(model) as cam:
            cam(images, targets=[0, 1, 2, 9])
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert hook_count(model) == before


def test_leaving_the_with_block_releases_the_model_and_closes_the_explainer(images):
    model = sports_vgg19("reduce256-two-phase", num_classes=6, width=0.125)
    with GradCAM(model) as cam:
        inside = cam(images)
    assert inside.maps.shape == (4, 1, 64, 64) and cam.closed
    assert hook_count(model) == 0 and cam.target_layers == [default_target_layer(model)]
    with pytest.raises(RuntimeError, match=r"this GradCAM \(layers \['features\.\d+'\]\) was closed, by leaving its "
                                           r"`with` block or by close\(\); make a new one"):
        cam(images)
    with pytest.raises(RuntimeError, match="this GradCAM is closed"):
        with cam:
            pass
    cam.close()  # again: nothing to do
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the closed explainer (still referenced here) no longer keeps the model


def test_close_without_a_with_block(model, images):
    cam = GradCAM(model, target_layer=["features.38", default_target_layer(model)])
    cam(images)
    cam.close()
    assert cam.model is None and cam.layers == [] and cam.target_layers == ["features.38", default_target_layer(model)]
    with pytest.raises(RuntimeError, match="was closed"):
        cam(images)


def live_tensors():
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module attributes warns
        warnings.simplefilter("ignore")
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def test_fifty_calls_grow_neither_hooks_nor_live_tensors(model, images):
    cam = GradCAM(model, target_layer=["features.38", default_target_layer(model)])
    cam(images, top_k=2)
    tensors = live_tensors()
    hooks = hook_count(model)
    for _ in range(50):
        out = cam(images, top_k=2)
    del out
    assert hook_count(model) == hooks == 0
    assert live_tensors() <= tensors


def test_several_layers_average_their_normalised_maps(model, images):
    layers = ["features.38", default_target_layer(model)]
    both = GradCAM(model, target_layer=layers)(images)
    singles = [GradCAM(model, target_layer=layer)(images, targets=both.classes).maps for layer in layers]
    torch.testing.assert_close(both.maps, (singles[0] + singles[1]) / 2, atol=1e-6, rtol=0)


def test_channels_last_under_bf16_autocast(model, images):
    fp32 = GradCAM(model)(images)
    model = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = GradCAM(model)(images.contiguous(memory_format=torch.channels_last), targets=fp32.classes)
    assert bf16.maps.dtype == torch.float32 and torch.isfinite(bf16.maps).all()
    a, b = fp32.maps.flatten(1), bf16.maps.flatten(1)
    corr = torch.nn.functional.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True))
    assert (corr > 0.9).all(), corr


def test_errors_name_the_problem(model, images):
    with pytest.raises(ValueError, match=r"no layer named 'features\.99' in SportsVGG; close matches: features\.9"):
        GradCAM(model, target_layer="features.99")
    cam = GradCAM(model)
    with pytest.raises(ValueError, match=r"targets of shape \(3,\) do not match the batch of 4 images"):
        cam(images, targets=[0, 1, 2])
    with pytest.raises(ValueError, match="top_k=7 must be an integer in"):
        cam(images, top_k=7)
    with pytest.raises(ValueError, match=r"layer 'head.2' gives a tensor of shape \(4, 128\); "
                                         r"expected \(B, C, h, w\) maps or a \(B, N, D\) token sequence; pass layout="):
        GradCAM(model, target_layer="head.2")(images)
    with pytest.raises(ValueError, match="method='gradcam3' is not one of gradcam, gradcam\\+\\+"):
        make_explainer(model, "gradcam3")
    with pytest.raises(TypeError, match="method"):
        GradCAM(model, method="gradcam++")  # one class per method: GradCAMPlusPlus


def test_token_sequences_become_grids():
    B, g, D = 2, 3, 5
    tokens = torch.arange(B * (g * g + 1) * D, dtype=torch.float32).reshape(B, g * g + 1, D)
    grid = Layout("BND", prefix_tokens=1).to_maps(tokens, "x", (24, 24))
    assert grid.shape == (B, D, g, g)
    assert torch.equal(grid[1, :, 2, 1], tokens[1, 1 + 2 * g + 1])  # class token dropped, row-major patches
    assert torch.equal(Layout("NBD", prefix_tokens=1).to_maps(tokens.transpose(0, 1), "x", (24, 24)), grid)
    with pytest.raises(ValueError, match="20 tokens minus 0 prefix token"):
        Layout("BND").to_maps(torch.zeros(B, 20, D), "x", (24, 24))
    with_registers = Layout("BND", prefix_tokens=5).to_maps(torch.zeros(B, 21, D), "x", (24, 24))  # class + 4
    assert with_registers.shape == (B, D, 4, 4)
    wide = Layout("BND", prefix_tokens=1).to_maps(torch.zeros(B, 1 + 3 * 5, D), "x", (48, 80))  # not square
    assert wide.shape == (B, D, 3, 5)


class ClipClassifier(nn.Module):
    """An open_clip image tower with a fixed linear head: logits like a zero-shot classifier's."""

    def __init__(self, clip, num_classes=4):
        super().__init__()
        self.clip = clip
        self.head = nn.Parameter(torch.randn(clip.visual.output_dim, num_classes))

    def forward(self, x):
        f = self.clip.encode_image(x, normalize=True)
        return 10 * f @ self.head


def tiny_clip(vision_cfg):
    import open_clip

    torch.manual_seed(0)
    text = open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return ClipClassifier(open_clip.model.CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text)).eval()


@clip_tiny.needs_open_clip
def test_open_clip_vit_default_layer_and_token_reshape():
    import open_clip

    model = tiny_clip(open_clip.model.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32))
    assert default_target_layer(model) == "clip.visual.transformer.resblocks.1.ln_1"
    x = torch.randn(3, 3, 32, 32)
    out = GradCAM(model)(x, top_k=2)
    assert out.maps.shape == (3, 2, 32, 32)
    acts, grads = hand_captured(model, x, "clip.visual.transformer.resblocks.1.ln_1", out.classes[:, 0])
    assert acts.shape == (3, 17, 32)  # 4x4 patches + class token, batch first
    to_grid = lambda t: t[:, 1:].transpose(1, 2).reshape(3, 32, 4, 4)  # noqa: E731
    expected = gradcam_reference(to_grid(acts), to_grid(grads), (32, 32))
    torch.testing.assert_close(out.maps[:, 0], expected, atol=1e-4, rtol=0)


@clip_tiny.needs_open_clip
def test_open_clip_modified_resnet_default_layer():
    import open_clip

    model = tiny_clip(open_clip.model.CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64))
    assert default_target_layer(model) == "clip.visual.layer4"
    out = GradCAM(model)(torch.randn(2, 3, 64, 64))
    assert out.maps.shape == (2, 1, 64, 64) and float(out.maps.max()) > 0.99


clip_tiny.register()


@clip_tiny.needs_open_clip
@pytest.mark.parametrize("name, layer", [("tiny-vit-test", "visual.transformer.resblocks.1.ln_1"),
                                         ("tiny-rn-test", "visual.layer4")])
def test_gradcam_of_a_free_text_prompt_is_the_hand_computation(name, layer):
    from sportsnet.cam import GradCAM, default_target_layer
    from sportsnet.ops import gradcam_reference

    torch.manual_seed(0)
    b = load_clip(name, "none")
    clf = ZeroShotClassifier.from_names(b, ["a person surfing", "a person skiing"], ["{}"]).eval()
    assert default_target_layer(clf) == layer
    x = torch.randn(2, 3, b.image_size, b.image_size)
    cam = GradCAM(clf)
    out = cam(x, targets=1)  # the second prompt, whatever the prediction
    assert out.maps.shape == (2, 1, b.image_size, b.image_size) and out.classes.eq(1).all()
    layout = cam.layouts[layer]
    store = {}
    handle = dict(clf.named_modules())[layer].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    logits = clf(x)
    handle.remove()
    grads = torch.autograd.grad(logits[:, 1].sum(), store["a"])[0]
    size = tuple(x.shape[-2:])
    expected = gradcam_reference(layout.to_maps(store["a"].detach(), layer, size), layout.to_maps(grads, layer, size),
                                 size)
    torch.testing.assert_close(out.maps[:, 0], expected, atol=1e-4, rtol=0)


class ChannelsLastStage(nn.Module):
    """A conv stem, then a stage that works channels-last, (B, h, w, C), as Swin and MambaOut do."""

    def __init__(self, opaque=False):
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.opaque = opaque
        self.stage = nn.Identity()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)  # (B, h, w, C)
        x = x * self.scale if self.opaque else self.mix(x)  # opaque: nothing says where the channels are
        x = self.stage(x).relu()
        return self.head(x.mean((1, 2)))


def test_a_channels_last_stage_is_resolved_from_the_model_and_matches_its_permuted_maps():
    model, x = ChannelsLastStage().eval(), torch.randn(2, 3, 24, 24)
    with GradCAM(model, "stage") as cam:
        out = cam(x, targets=[1, 2])
        assert (cam.layouts["stage"].kind, cam.layouts["stage"].why) == ("BHWC", "mix keeps channels on axis 3")
    a, g = hand_captured(model, x, "stage", torch.tensor([1, 2]))
    expected = gradcam_reference(a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2), (24, 24))
    torch.testing.assert_close(out.maps[:, 0], expected, atol=1e-5, rtol=0)
    # A reshape as pytorch-grad-cam's reshape_transform gives the same maps; reading it as (B, C, h, w) does not.
    with GradCAM(model, "stage", reshape=lambda t: t.permute(0, 3, 1, 2)) as cam:
        torch.testing.assert_close(cam(x, targets=[1, 2]).maps, out.maps, atol=1e-6, rtol=0)
    with GradCAM(model, "stage", layout="BCHW") as cam:  # told so: the caller's word is taken
        assert (cam(x, targets=[1, 2]).maps - out.maps).abs().max() > 0.1


def test_an_output_whose_layout_the_model_does_not_tell_is_refused_until_given():
    model, x = ChannelsLastStage(opaque=True).eval(), torch.randn(2, 3, 24, 24)
    for method in ("gradcam", "scorecam", "ablationcam", "eigencam"):
        with pytest.raises(ValueError, match=r"cannot tell whether layer 'stage''s output \(2, 6, 6, 8\) is "
                                             r"\(B, C, h, w\) or \(B, h, w, C\): no module with a known channel "
                                             r"axis produced that shape; pass layout='BCHW'"):
            with make_explainer(model, method, target_layer="stage") as cam:
                cam(x)
    # 32 px: (2, 8, 8, 8), as many channels as columns: the stem's (B, C, h, w) output of that shape proves
    # nothing (a permute keeps the shape), so even the model that says so (mix) is not believed from outside.
    with pytest.raises(ValueError, match=r"output \(2, 8, 8, 8\) is \(B, C, h, w\) or \(B, h, w, C\): axes 1 "
                                         r"and 3 have the same size"):
        GradCAM(ChannelsLastStage().eval(), "stage")(torch.randn(2, 3, 32, 32))
    with GradCAM(model, "stage", layout="BHWC") as cam:
        out = cam(x, targets=[0, 3])
    a, g = hand_captured(model, x, "stage", torch.tensor([0, 3]))
    expected = gradcam_reference(a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2), (24, 24))
    torch.testing.assert_close(out.maps[:, 0], expected, atol=1e-5, rtol=0)


class TinyTokens(nn.Module):
    """A ViT-shaped model: 4x4 patches of 6 px, ``prefix`` leading tokens, one linear block."""

    def __init__(self, prefix=1, declare=False):
        super().__init__()
        torch.manual_seed(3)
        self.patch = nn.Conv2d(3, 8, 6, stride=6)
        self.prefix = nn.Parameter(torch.randn(1, prefix, 8))
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)
        if declare:
            self.num_prefix_tokens = prefix

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 16, 8)
        t = torch.cat([self.prefix.expand(len(x), -1, -1), t], 1)
        t = self.block(t)
        return self.head(t.relu().mean(1))


def test_prefix_tokens_from_the_model_given_or_refused():
    x = torch.randn(2, 3, 24, 24)
    with GradCAM(TinyTokens(prefix=1).eval(), "block") as cam:  # one class token: 17 = 16 + 1, the only fit
        cam(x)
        assert cam.layouts["block"].prefix_tokens == 1 and "the only count of 0 or 1" in cam.layouts["block"].why
    registers = TinyTokens(prefix=5).eval()  # a class token and 4 registers, undeclared
    with pytest.raises(ValueError, match=r"layer 'block' gives 21 tokens and the model declares no prefix tokens.*"
                                         r"pass prefix_tokens="):
        GradCAM(registers, "block")(x)
    given = GradCAM(registers, "block", prefix_tokens=5)(x, targets=[1, 2])
    declared = TinyTokens(prefix=5, declare=True).eval()
    with GradCAM(declared, "block") as cam:
        torch.testing.assert_close(cam(x, targets=[1, 2]).maps, given.maps, atol=1e-6, rtol=0)
        assert "num_prefix_tokens" in cam.layouts["block"].why


def test_layout_arguments_are_checked():
    model = ChannelsLastStage().eval()
    for kwargs, message in [(dict(layout="NHWC"), "layout='NHWC' is not one of BCHW, BHWC, BND, NBD"),
                            (dict(layout="BCHW", prefix_tokens=1), "prefix_tokens=1 applies to token layouts"),
                            (dict(layout="BND", reshape=torch.clone), "pass reshape= or layout="),
                            (dict(prefix_tokens=-1), "prefix_tokens=-1 must be a non-negative integer"),
                            (dict(reshape="permute"), "reshape='permute' must be a callable")]:
        with pytest.raises(ValueError, match=message):
            GradCAM(model, "stage", **kwargs)
    with pytest.raises(ValueError, match=r"reshape= turned layer 'stage''s output \(2, 6, 6, 8\) into \(72, 8\)"):
        GradCAM(model, "stage", reshape=lambda t: t.reshape(-1, 8))(torch.randn(2, 3, 24, 24))


class Scaled(nn.Module):
    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "hirescam", "layercam", "gradcam-elementwise",
                                    "eigengradcam", "ablationcam", "eigencam"])
def test_maps_do_not_depend_on_the_scale_of_the_logits(model, images, method):
    """A CAM is defined up to a positive scale: logits times 1e-12 (random weights, a temperature) give the
    same normalised maps, also where the raw map is below the epsilon (the normalisation's eps is relative).
    Grad-CAM++ is left out: its alpha's 1e-6 constant makes the method itself depend on the scale."""
    with make_explainer(model, method) as cam:
        plain = cam(images).maps
    with make_explainer(Scaled(model, 1e-12), method, target_layer=f"model.{default_target_layer(model)}") as cam:
        tiny = cam(images).maps
    assert plain.amax() > 0.99 and (plain - tiny).abs().max() <= 1e-4
