"""sportsnet.cam.sanity: the cascade's order and steps, the model and random state left alone, and flags that
follow from what a method depends on (maps that ignore the model or the class fail, a gradient passes)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sportsnet.cam import make_explainer
from sportsnet.cam.sanity import (
    RANDOM_LOGIT_THRESHOLD,
    RANDOMISATION_THRESHOLD,
    cascade_points,
    cascading_randomisation,
    flags,
    other_classes,
    random_logit,
    randomisation_units,
)


class Projected(nn.Module):
    """An embedding added first and a projection applied last, both lone parameters (as open_clip's ViT);
    a convolution defined after the linear layer but run before it."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(8, 4))
        self.fc = nn.Linear(6, 8)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.embed = nn.Parameter(torch.randn(3, 1, 1))

    def forward(self, x):
        h = torch.relu(self.conv(x + self.embed)).mean((2, 3))
        return self.fc(h) @ self.proj


def test_units_follow_the_computation_from_the_output_down():
    units = randomisation_units(Projected(), torch.rand(2, 3, 8, 8))
    assert units == [("proj", ["proj"]), ("fc", ["fc.weight", "fc.bias"]), ("conv", ["conv.weight", "conv.bias"]),
                     ("embed", ["embed"])]
    assert cascade_points(4, 3) == [1, 2, 4] and cascade_points(35, 5) == [1, 2, 6, 14, 35]
    with pytest.raises(ValueError, match="steps=1 must be an integer >= 2"):
        cascade_points(4, 1)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def input_gradient(model, images, classes):
    x = images.clone().requires_grad_(True)
    with torch.enable_grad():
        g, = torch.autograd.grad(model(x).gather(1, classes[:, None]).sum(), x)
    return g.abs().sum(1)


def brightness(model, images, classes):
    return images.mean(1)  # ignores the model and the class


def class_blind_gradcam(model, images, classes):
    with make_explainer(model, "eigencam", target_layer="3") as cam:  # no class enters Eigen-CAM's map
        return cam(images, targets=classes).maps[:, 0]


def test_the_cascade_separates_a_map_that_ignores_the_model_and_leaves_model_and_rng_alone():
    model, images, classes = small_cnn(), torch.rand(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    out = cascading_randomisation(model, {"gradient": input_gradient, "brightness": brightness}, images, classes,
                                  steps=3, seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # the global generator as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s["units"] for s in out["steps"]] == [1, 2, 3] and out["steps"][0]["unit"] == "6"
    assert out["spearman"]["brightness"].shape == (3, 4)
    torch.testing.assert_close(out["spearman"]["brightness"], torch.ones(3, 4))
    rho = {m: float(v.mean()) for m, v in out["spearman"].items()}
    assert rho["gradient"] < RANDOMISATION_THRESHOLD <= rho["brightness"], rho
    again = cascading_randomisation(model, {"gradient": input_gradient}, images, classes, steps=3, seed=0)
    assert torch.equal(again["spearman"]["gradient"], out["spearman"]["gradient"])  # seeded


def test_random_logit_flags_maps_that_ignore_the_class():
    model, images, classes = small_cnn(), torch.rand(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    others = other_classes(classes.repeat(50), 4, torch.Generator().manual_seed(0))
    assert not torch.any(others == classes.repeat(50)) and set(others.tolist()) == {0, 1, 2, 3}
    ssim = random_logit(model, {"eigencam": class_blind_gradcam, "gradient": input_gradient}, images, classes, 4)
    means = {m: float(v.mean()) for m, v in ssim.items()}
    assert means["eigencam"] == pytest.approx(1.0) and means["gradient"] < RANDOM_LOGIT_THRESHOLD, means
    assert flags({"gradient": 0.1}, means) == {"eigencam": [f"maps of another class look the same (SSIM 1.00 >= "
                                                            f"{RANDOM_LOGIT_THRESHOLD})"]}
    with pytest.raises(ValueError, match="num_classes=1 leaves no other class"):
        other_classes(classes, 1, torch.Generator())


def test_trust_report_on_models_no_one_here_wrote():
    """The API's one call: a torchvision CNN and a timm ViT, the methods that cannot read a model refused with
    their reason, every metric per method, the sanity checks and flags that follow their thresholds."""
    from torchvision.models import resnet18

    from sportsnet.cam.trust import trust_report

    timm = pytest.importorskip("timm", reason="timm comes with open_clip")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=4,
                            depth=2).eval()
    cnn = resnet18(num_classes=4).eval()
    images, boxes = torch.rand(2, 3, 32, 32), torch.tensor([[0, 0, 16, 16], [8, 8, 32, 32]])
    methods = ["gradcam", "eigencam", "legrad", "gradient-rollout"]
    for model, refused in ((cnn, {"legrad", "gradient-rollout"}), (vit, set())):
        report = trust_report(model, images, boxes=boxes, methods=methods, deletion_steps=2, sensitivity_samples=2,
                              sanity_steps=2)
        assert set(report["refused"]) == refused and set(report["methods"]) == set(methods) - refused
        assert all("holds no vision transformer" in why for why in report["refused"].values())
        m = report["metrics"]
        for method in report["methods"]:
            for key in ("pointing_game", "deletion_auc", "sparseness", "faithfulness_correlation", "max_sensitivity",
                        "sanity_spearman", "random_logit_ssim"):
                assert f"{key}/{method}" in m, (key, method)
            fails = (m[f"sanity_spearman/{method}"] >= RANDOMISATION_THRESHOLD
                     or m[f"random_logit_ssim/{method}"] >= RANDOM_LOGIT_THRESHOLD)
            assert (method in report["sanity"]["flags"]) == fails, (method, m)
        assert "eigencam" in report["sanity"]["flags"]  # the same map for every class
