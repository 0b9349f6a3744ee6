"""The CAM methods beyond the gradient-weighted family: parity with pytorch-grad-cam and torchcam on
the same model, input and target; our definitions where they differ; the split at the target layer;
precision, state restored, and bad input."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

from sportsnet.cam import EXPLAINERS, AblationCAM, EigenCAM, ScoreCAM, make_explainer
from sportsnet.cam.eigencam import principal_projection
from sportsnet.cam.scorecam import channel_masks
from sportsnet.cam.split import rest_of_model, split_after
from sportsnet.models import sports_vgg19
from sportsnet.ops import gradcam_reference, weighted_cam_reference
from tests.support import clip_tiny

PARITY_ATOL = 1e-4


class SameResolution(nn.Module):
    """Convolutions that keep the image's resolution, then global average pooling and one linear layer:
    the target layer's maps need no resizing, so the libraries' resizing conventions drop out."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)
        with torch.no_grad():  # maps of order 1, so each library's normalisation eps (1e-7, 1e-8) is negligible
            for conv in (self.features[0], self.features[2]):
                conv.weight.mul_(4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Bypass(nn.Module):
    """A skip connection around the target layer ``b``: the split after ``b`` is unsafe."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.a(x)
        return self.fc((self.b(y) + y).mean((2, 3)))


@pytest.fixture(scope="module")
def small():
    model = SameResolution().eval()
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    return model, images


def ours(model, method, images, classes, layer="features.3", **options):
    if method in ("scorecam", "sscam", "iscam", "ablationcam", "eigencam", "kpcacam"):
        options.setdefault("precision", "fp32")
    with make_explainer(model, method, target_layer=layer, **options) as cam:
        return cam(images, targets=classes).maps[:, 0]


def pgc_maps(cls, model, images, classes, layer, **call_options):
    """pytorch-grad-cam's maps of ``cls`` for ``classes`` (``call_options``: aug_smooth, eigen_smooth)."""
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    with cls(model=model, target_layers=[layer]) as cam:
        return torch.from_numpy(cam(input_tensor=images, targets=[targets_mod.ClassifierOutputTarget(int(c))
                                                                  for c in classes], **call_options))


GRAD_PGC = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
            "layercam": "LayerCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "kpcacam": "KPCA_CAM",
            "gradcam-elementwise": "GradCAMElementWise", "fullgrad": "FullGrad"}


@pytest.mark.parametrize("method", list(GRAD_PGC))
def test_parity_with_pytorch_grad_cam(small, method):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model, images = small
    classes = torch.tensor([1, 3])
    theirs = pgc_maps(getattr(pgc, GRAD_PGC[method]), model, images, classes, model.features[3])
    mine = ours(model, method, images, classes)
    assert (mine - theirs).abs().max() <= PARITY_ATOL, method


def test_eigencam_parity_with_pytorch_grad_cam_up_to_the_documented_sign(small):
    """Eigen-CAM and Eigen-Grad-CAM are pytorch-grad-cam's projection with its sign correction (our
    definition, documented in sportsnet.cam.eigencam): theirs without it differs at most in sign."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection, get_2d_projection_with_sign_correction

    model, images = small
    acts = model.features(images).detach()
    corrected = torch.from_numpy(scale_cam_image(np.maximum(get_2d_projection_with_sign_correction(acts.numpy()), 0),
                                                 (12, 12)))
    mine = ours(model, "eigencam", images, torch.tensor([0, 0]))
    assert (mine - corrected).abs().max() <= PARITY_ATOL
    raw = get_2d_projection(acts.numpy())
    for b in range(2):  # their uncorrected projection is ours, or ours negated
        p, _ = principal_projection(acts[b:b + 1])
        ours_projection = (acts[b].flatten(1).T - acts[b].flatten(1).mean(1)) @ p[0]
        their_projection = torch.from_numpy(raw[b]).flatten()
        gap = min((ours_projection - their_projection).abs().max(), (ours_projection + their_projection).abs().max())
        assert gap < 1e-4


def test_eigengradcam_is_the_projection_of_activations_times_gradients(small):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    model, images = small
    classes = torch.tensor([2, 4])
    x = images.clone()
    acts = model.features(x).detach().requires_grad_(True)
    logits = model.fc(torch.flatten(model.pool(acts), 1))
    grads, = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), acts)
    expected = scale_cam_image(np.maximum(get_2d_projection_with_sign_correction((acts * grads).detach().numpy()), 0),
                               (12, 12))
    assert (ours(model, "eigengradcam", images, classes) - torch.from_numpy(expected)).abs().max() <= PARITY_ATOL


# torchcam's GradCAMpp is left out: its alpha's denominator sums A * G^3 over the positions, where the
# paper (eq. 19), pytorch-grad-cam and we multiply sum(A) by G^3 at each position (parity above), and its
# division by that denominator is applied to a masked copy (alpha[mask].div_), so alpha stays G^2.
# SS-CAM and SmoothGrad-CAM++ draw random noise: their definitions are tested below, not their parity.
TORCHCAM = {"scorecam": "ScoreCAM", "iscam": "ISCAM", "cam": "CAM", "gradcam": "GradCAM", "xgradcam": "XGradCAM",
            "layercam": "LayerCAM"}


def torchcam_maps(method, model, images, classes, normalized=True):
    methods = pytest.importorskip("torchcam.methods")
    with getattr(methods, TORCHCAM[method])(model, target_layer="features.3", input_shape=(3, 12, 12)) as extractor:
        with torch.set_grad_enabled(method not in ("scorecam", "cam")):
            scores = model(images)
        return extractor(class_idx=classes.tolist(), scores=scores, normalized=normalized)[0].detach()


@pytest.mark.parametrize("method", list(TORCHCAM))
def test_parity_with_torchcam(small, method):
    model, images = small
    classes = torch.tensor([0, 2])
    theirs = torchcam_maps(method, model, images, classes, normalized=method != "cam")
    if method == "cam":  # torchcam scales CAM's signed sum to [0, 1]; we take its ReLU first, as for every method
        theirs = gradcam_reference(theirs[:, None], torch.ones_like(theirs[:, None]), (12, 12), method="hirescam")
    mine = ours(model, method, images, classes)
    assert (mine - theirs).abs().max() <= PARITY_ATOL, method


def test_scorecam_weights_are_the_softmax_of_masked_scores():
    """Our definition at a layer that needs upsampling (14x14 -> 64x64): per-channel [0, 1] scaling at
    the layer's resolution, bilinear upsampling with align_corners=False, softmax over channels."""
    model = sports_vgg19(num_classes=4, width=0.125).eval()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([[2]])
    acts = {}
    handle = model.features[35].register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    A = acts["a"]
    scores = []
    with torch.no_grad():
        for k in range(A.shape[1]):
            a = A[0, k]
            mask = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else torch.zeros_like(a)
            up = torch.nn.functional.interpolate(mask[None, None], size=(64, 64), mode="bilinear", align_corners=False)
            scores.append(model(images * up)[0, 2])
    with ScoreCAM(model, "features.35", precision="fp32", batch_size=7) as cam:
        got = cam.channel_scores(images, A, classes)[0, :, 0]
    torch.testing.assert_close(got, torch.stack(scores), atol=1e-5, rtol=1e-5)


def test_scorecam_runs_cache_sized_batches_on_a_cpu_unless_told():
    model = SameResolution().eval()
    images, A = torch.rand(2, 3, 12, 12), torch.rand(2, 16, 12, 12)  # 32 (image, channel) pairs, none constant
    for batch_size, expected in ((None, [8] * 4), (20, [20, 12])):
        calls = []
        handle = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
        with ScoreCAM(model, "features.3", precision="fp32", batch_size=batch_size) as cam:
            cam.channel_scores(images, A, torch.tensor([[1], [2]]))
        handle.remove()
        assert calls == expected, (batch_size, calls)


def test_scorecam_runs_one_forward_for_all_constant_channels():
    model = SameResolution().eval()
    images = torch.rand(2, 3, 12, 12)
    A = torch.rand(2, 16, 12, 12)
    A[0, 3] = 0.0
    A[1, 5:9] = 2.5
    masks, constant = channel_masks(A)
    assert constant.sum() == 5 and masks[constant].abs().sum() == 0
    calls = []
    handle = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    with ScoreCAM(model, "features.3", precision="fp32", batch_size=64) as cam:
        scores = cam.channel_scores(images, A, torch.tensor([[1], [2]]))
    handle.remove()
    assert sum(calls) == 1 + (32 - 5), calls  # one all-zero image, then each non-constant channel
    with torch.no_grad():
        zero = model(torch.zeros(1, 3, 12, 12))[0]
    torch.testing.assert_close(scores[0, 3, 0], zero[1], atol=1e-5, rtol=0)  # channels-last vs not: rounding
    torch.testing.assert_close(scores[1, 5:9, 0], zero[2].expand(4), atol=1e-5, rtol=0)


def test_the_split_runs_only_the_layers_after_the_target():
    model = sports_vgg19(num_classes=4, width=0.125).eval()
    rest, why = split_after(model, "features.35")
    assert why == "split"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = model.features[:36](x)  # the output of features.35, the last ReLU
        assert torch.equal(rest(features), model.forward_head(model.neck(model.features[36](features))))
    ran = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, m in model.named_modules() if n]
    with torch.no_grad():
        rest(features)
    for h in hooks:
        h.remove()
    assert ran[0] == "features.36" and "head.0" in ran  # the max-pool after the target, then the rest
    assert not any(n.startswith("features.") and int(n.split(".")[1]) <= 35 for n in ran)


def test_a_branch_around_the_target_layer_takes_full_forwards(caplog):
    model = Bypass().eval()
    rest, why = split_after(model, "b")
    assert rest is None and "without passing through layer 'b'" in why
    images = torch.rand(2, 3, 8, 8)
    with caplog.at_level(logging.INFO, logger="sportsnet.cam.split"):
        with AblationCAM(model, "b", precision="fp32") as cam:
            got = cam(images, targets=torch.tensor([1, 2]))
    assert "full forwards for each variant" in caplog.text
    # The drops equal ones computed literally: zero channel c of b's output in a full forward.
    drops = torch.zeros(2, 6)
    with torch.no_grad():
        original = model(images)[torch.arange(2), torch.tensor([1, 2])]
        for b, cls in ((0, 1), (1, 2)):
            for c in range(6):
                handle = model.b.register_forward_hook(lambda m, i, o, c=c: o.index_fill(1, torch.tensor([c]), 0.0))
                ablated = model(images[b:b + 1])[0, cls]
                handle.remove()
                rest_fn = rest_of_model(model, ("b", model.b), images)
                out = model.b(model.a(images[b:b + 1])).index_fill(1, torch.tensor([c]), 0.0)
                assert torch.allclose(rest_fn(b, out)[0, cls], ablated, atol=1e-6)
                drops[b, c] = original[b] - ablated
        A = model.b(model.a(images))
    # ...and the maps are those drops, relative to the logit, as channel weights.
    expected = weighted_cam_reference(A, drops / original[:, None], (8, 8))
    assert got.maps.shape == (2, 1, 8, 8)
    torch.testing.assert_close(got.maps[:, 0], expected, atol=1e-4, rtol=0)


def test_ablation_skips_all_zero_channels_with_a_zero_drop():
    model = SameResolution().eval()
    images = torch.rand(1, 3, 12, 12)
    with AblationCAM(model, "features.3", precision="fp32") as cam:
        cam(images)  # resolves the layer's layout
        A = torch.rand(1, 16, 12, 12)
        A[0, :10] = 0.0
        calls = []
        handle = model.fc.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
        drops = cam.score_drops(images, ("features.3", model.features[3]), A, A, torch.tensor([[1]]),
                                torch.tensor([[1.0]]))
        handle.remove()
    assert sum(calls) == 6 and torch.equal(drops[0, :10], torch.zeros(10, 1))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "eigencam", "eigengradcam", "cam"])
def test_state_is_restored_after_an_error(method):
    model = SameResolution().train()
    flags = [p.requires_grad for p in model.parameters()]
    boom = model.fc.register_forward_hook(lambda m, i, o: (_ for _ in ()).throw(RuntimeError("boom"))
                                          if i[0].shape[0] > 2 or method in ("eigencam", "cam", "eigengradcam")
                                          else None)
    with pytest.raises(RuntimeError, match="boom"):
        with make_explainer(model, method, target_layer="features.3") as cam:
            cam(torch.rand(2, 3, 12, 12))
    boom.remove()
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert not any(m._forward_hooks for m in model.modules())


def test_bf16_autocast_and_channels_last_stay_close_to_fp32(small):
    model, images = small
    classes = torch.tensor([1, 3])
    exact = ours(model, "scorecam", images, classes)
    fast = ours(model, "scorecam", images, classes, precision="bf16", channels_last=True)
    assert torch.isfinite(fast).all() and (fast - exact).abs().max() < 0.1


def test_cam_refuses_a_head_that_is_not_pooling_and_one_linear_layer():
    model = sports_vgg19(num_classes=4, width=0.125).eval()
    with pytest.raises(ValueError, match="CAM: layer 'features.35' has 64 channels but 'head.5' takes"):
        with make_explainer(model, "cam", target_layer="features.35") as cam:
            cam(torch.rand(1, 3, 64, 64))


def test_every_method_by_name_and_bad_names():
    model, images = SameResolution().eval(), torch.rand(1, 3, 12, 12)
    for method, cls in EXPLAINERS.items():
        if cls.transformer_only:  # tested in tests/cam/test_attention.py; a CNN is refused when built
            with pytest.raises(ValueError, match="holds no vision transformer"):
                make_explainer(model, method)
            continue
        with make_explainer(model, method, target_layer="features.3") as cam:
            out = cam(images, top_k=2)
        assert out.maps.shape == (1, 2, 12, 12) and torch.isfinite(out.maps).all(), method
        assert not out.maps.requires_grad, method
        assert out.maps.min() >= 0 and out.maps.max() <= 1, method
    with pytest.raises(ValueError, match="method='scorcam' is not one of"):
        make_explainer(model, "scorcam")
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        ScoreCAM(model, "features.3", batch_size=0)


def test_eigencam_ignores_the_class_and_matches_the_literal_projection():
    model, images = SameResolution().eval(), torch.rand(2, 3, 12, 12)
    with EigenCAM(model, "features.3") as cam:
        out = cam(images, top_k=3)
    assert torch.equal(out.maps[:, 0], out.maps[:, 2])
    A = model.features(images).detach().double()
    for b in range(2):
        X = A[b].flatten(1).T
        X = X - X.mean(0)
        v = torch.linalg.svd(X, full_matrices=False).Vh[0]
        p = X @ v
        p = p if p.max() >= -p.min() else -p
        expected = gradcam_reference(p.reshape(1, 1, 12, 12), torch.ones(1, 1, 12, 12, dtype=torch.float64), (12, 12),
                                     method="hirescam")
        torch.testing.assert_close(out.maps[b, 0].double(), expected[0], atol=1e-4, rtol=0)


def test_sscam_without_noise_is_scorecam_and_its_noise_is_seeded(small):
    model, images = small
    classes = torch.tensor([1, 3])
    scorecam = ours(model, "scorecam", images, classes)
    torch.testing.assert_close(ours(model, "sscam", images, classes, std=0.0, num_samples=2), scorecam,
                               atol=1e-5, rtol=0)
    noisy = ours(model, "sscam", images, classes, num_samples=3, seed=1)
    assert torch.equal(noisy, ours(model, "sscam", images, classes, num_samples=3, seed=1))
    assert not torch.equal(noisy, ours(model, "sscam", images, classes, num_samples=3, seed=2))
    assert not torch.equal(noisy, scorecam)


def test_smoothgradcampp_with_one_noise_free_sample_is_gradcampp(small):
    model, images = small
    classes = torch.tensor([0, 4])
    torch.testing.assert_close(ours(model, "smoothgradcam++", images, classes, num_samples=1, std=0.0),
                               ours(model, "gradcam++", images, classes), atol=1e-5, rtol=0)
    smooth = ours(model, "smoothgradcam++", images, classes, seed=3)
    assert torch.equal(smooth, ours(model, "smoothgradcam++", images, classes, seed=3))
    assert torch.isfinite(smooth).all() and smooth.amax((1, 2)).min() > 0.99


clip_tiny.register()


@clip_tiny.needs_open_clip
@pytest.mark.parametrize("name, fast", [("tiny-vit-test", False), ("tiny-rn-test", True), ("tiny-vit-test", True)],
                         ids=["vit-fp32", "rn-bf16-channels-last", "vit-bf16-channels-last"])
def test_every_method_on_open_clip_towers(name, fast):
    """Every method on a zero-shot classifier over an open_clip ViT (token maps) and ModifiedResNet, in
    float32 and under bf16 autocast with channels-last inputs; CAM is refused (no pooling + linear head)."""
    from sportsnet.models.clip import load_clip
    from sportsnet.models.zero_shot import ZeroShotClassifier

    torch.manual_seed(0)
    bundle = load_clip(name, "none")
    clf = ZeroShotClassifier.from_names(bundle, ["a person surfing", "a person skiing", "a dog"], ["{}"]).eval()
    images = torch.randn(1 if name == "tiny-rn-test" else 2, 3, bundle.image_size, bundle.image_size)
    if fast:
        images = images.contiguous(memory_format=torch.channels_last)
    lively = 0
    for method in EXPLAINERS:
        options = {}
        if method in ("scorecam", "sscam", "iscam", "ablationcam", "eigencam"):
            options = {"precision": "bf16" if fast else "fp32", "channels_last": fast, "batch_size": 64}
        if method in ("sscam", "iscam", "smoothgradcam++"):
            options["num_samples"] = 2
        if method == "cam" or (EXPLAINERS[method].transformer_only and name == "tiny-rn-test"):
            with pytest.raises(ValueError, match="CAM|holds no vision transformer"):
                with make_explainer(clf, method, **options) as cam:
                    cam(images)
            continue
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            with make_explainer(clf, method, **options) as cam:
                out = cam(images, top_k=2)
        assert out.maps.shape == (len(images), 2, bundle.image_size, bundle.image_size), method
        assert torch.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 1, method
        lively += bool(out.maps.max() > 0.99)
    # Random weights: a method's maps may all be zero (a negative weighted sum everywhere), not most methods'.
    assert lively >= len(EXPLAINERS) // 2, lively


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_aug_smooth_matches_pytorch_grad_cam(small, method):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model, images = small
    classes = torch.tensor([1, 3])
    theirs = pgc_maps(getattr(pgc, GRAD_PGC[method]), model, images, classes, model.features[3], aug_smooth=True)
    options = {"precision": "fp32"} if method == "scorecam" else {}
    with make_explainer(model, method, target_layer="features.3", **options) as cam:
        mine = cam(images, targets=classes, aug_smooth=True).maps[:, 0]
        plain = cam(images, targets=classes).maps[:, 0]
    assert (mine - theirs).abs().max() <= PARITY_ATOL and not torch.allclose(mine, plain)


def test_finercam_matches_pytorch_grad_cam_and_is_gradcam_at_alpha_zero(small):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model, images = small
    with pgc.FinerCAM(model=model, target_layers=[model.features[3]]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=images))  # the predicted class vs its 3 nearest
    with make_explainer(model, "finercam", target_layer="features.3") as cam:
        out = cam(images)
    assert (out.maps[:, 0] - theirs).abs().max() <= PARITY_ATOL
    with make_explainer(model, "finercam", target_layer="features.3", alpha=0.0, comparisons=4) as cam:
        # alpha = 0: the score is the target's logit, whatever the weights of the comparisons
        plain = cam(images, targets=out.classes).maps
    torch.testing.assert_close(plain, ours(model, "gradcam", images, out.classes[:, 0])[:, None], atol=1e-5, rtol=0)


def test_guided_backprop_matches_pytorch_grad_cam_and_leaves_the_model_alone(small):
    pytest.importorskip("pytorch_grad_cam")
    import copy

    from pytorch_grad_cam import GuidedBackpropReLUModel

    from sportsnet.cam import guided_backprop

    model, images = small
    mine = guided_backprop(model, images, torch.tensor([[2], [2]]))[:, 0]  # (B, 3, H, W)
    assert all(type(m) is nn.ReLU for m in model.features if not isinstance(m, nn.Conv2d))
    theirs_model = copy.deepcopy(model)  # pytorch-grad-cam swaps the ReLU modules of the model it is given
    for b in range(2):
        theirs = GuidedBackpropReLUModel(theirs_model, device="cpu")(images[b:b + 1].clone(), target_category=2)
        torch.testing.assert_close(mine[b].permute(1, 2, 0), torch.from_numpy(theirs), atol=1e-6, rtol=1e-4)
    x = images.clone().requires_grad_(True)
    plain = torch.autograd.grad(model(x)[:, 2].sum(), x)[0]  # the plain gradient differs: the rule is in use
    assert not torch.allclose(plain, mine)
    with make_explainer(model, "guided-gradcam", target_layer="features.3") as cam:
        out = cam(images, targets=torch.tensor([2, 2]))
    expected = ours(model, "gradcam", images, torch.tensor([2, 2])) * mine.abs().sum(1)
    expected = expected / expected.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(out.maps[:, 0], expected, atol=5e-5, rtol=0)  # the epilogue's eps, rounding
    with make_explainer(model, "GuidedBackpropReLUModel") as cam:  # guided backpropagation's own map
        out = cam(images, targets=torch.tensor([2, 2]))
    saliency = mine.abs().sum(1)
    lo, hi = saliency.flatten(1).amin(1)[:, None, None], saliency.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(out.maps[:, 0], (saliency - lo) / (hi - lo), atol=5e-5, rtol=0)


class CurvedHead(SameResolution):
    """A head that is not piecewise linear in the target layer's output (tanh), so ShapleyCAM's
    Hessian-vector term is not zero."""

    def forward(self, x):
        return self.fc(torch.tanh(torch.flatten(self.pool(self.features(x)), 1)))


def test_shapleycam_matches_pytorch_grad_cam_and_is_gradcam_through_linear_layers(small):
    pgc = pytest.importorskip("pytorch_grad_cam")
    _, images = small
    classes = torch.tensor([1, 3])
    curved = CurvedHead().eval()
    theirs = pgc_maps(pgc.ShapleyCAM, curved, images, classes, curved.features[3])
    mine = ours(curved, "shapleycam", images, classes)
    assert (mine - theirs).abs().max() <= PARITY_ATOL
    assert (mine - ours(curved, "gradcam", images, classes)).abs().max() > 1e-3  # the second-order term counts
    linear = SameResolution().eval()
    torch.testing.assert_close(ours(linear, "shapleycam", images, classes), ours(linear, "gradcam", images, classes),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("n, C", [(196, 128), (49, 512), (16, 16), (1, 8)])
def test_first_right_singular_vector_is_the_svds_up_to_sign(n, C):
    from sportsnet.cam.projection import first_right_singular_vector

    g = torch.Generator().manual_seed(n * C)
    M = torch.relu(torch.randn(3, n, C, generator=g, dtype=torch.float64))
    M = M * torch.rand(C, generator=g, dtype=torch.float64)  # channels of different scales
    M = M - M.mean(1, keepdim=True) if n > 1 else M
    expected = torch.linalg.svd(M, full_matrices=False)[2][:, 0, :]
    got = first_right_singular_vector(M.float()).double()
    cosine = (got * expected).sum(1).abs() / got.norm(dim=1)
    torch.testing.assert_close(cosine, torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    if n < C:  # through the (n, n) Gram matrix: a zero matrix gives a zero vector, not NaN
        assert torch.equal(first_right_singular_vector(torch.zeros(2, n, C)), torch.zeros(2, C))


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_eigen_smooth_is_pytorch_grad_cams_up_to_the_documented_sign(small, method):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from sportsnet.cam.projection import principal_projection
    from sportsnet.ops import fused_weighted_cam
    from sportsnet.ops.reference import channel_terms

    model, images = small
    classes = torch.tensor([1, 3])
    theirs = pgc_maps(getattr(pgc, GRAD_PGC[method]), model, images, classes, model.features[3], eigen_smooth=True)
    with make_explainer(model, method, target_layer="features.3", eigen_smooth=True) as cam:
        mine = cam(images, targets=classes).maps[:, 0]
    acts = model.features(images).detach().requires_grad_(True)
    grads, = torch.autograd.grad(model.fc(torch.flatten(model.pool(acts), 1)).gather(1, classes[:, None]).sum(), acts)
    X = channel_terms(acts.detach(), grads, method)
    v, bias = principal_projection(X)
    flipped = fused_weighted_cam(X, -v, (12, 12), bias=-bias)  # the other orientation of the same direction
    assert not torch.allclose(mine, ours(model, method, images, classes))
    for b in range(2):  # 2e-4: two float32 SVDs (numpy's and torch's LAPACK) round differently; measured 1.0e-4
        assert min((mine[b] - theirs[b]).abs().max(), (flipped[b] - theirs[b]).abs().max()) <= 2 * PARITY_ATOL


def test_ablationcam_traces_its_split_once_per_layer(small):
    model, images = small
    with AblationCAM(model, "features.3", precision="fp32") as cam:
        first = cam(images).maps
        split = cam._splits["features.3"]
        assert split[1] == "split"
        assert torch.equal(cam(images).maps, first) and cam._splits["features.3"] is split
