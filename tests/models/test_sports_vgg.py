import pytest
import torch
from torch import nn

from sportsnet.models import parameter_groups, recipe_phases, sports_vgg19


def ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("recipe, neck_channels", [("seed000", 64), ("seed001", 32)])
def test_heads_give_the_right_shapes(recipe, neck_channels):
    m = sports_vgg19(recipe, num_classes=7, width=0.125).eval()
    x = torch.randn(3, 3, 64, 64)
    feats = m.forward_features(x)
    assert feats.shape == (3, neck_channels, 2, 2)
    assert m(x).shape == (3, 7)
    torch.testing.assert_close(m.forward_head(feats), m(x))


def test_seed000_head_layers_and_xavier_init():
    m = sports_vgg19("seed000", num_classes=100)
    assert isinstance(m.neck, nn.Dropout2d)
    kinds = [type(l).__name__ for l in m.head]
    assert kinds == ["Flatten", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    lin = m.head[2]
    assert (lin.in_features, lin.out_features) == (512 * 49, 1024)
    bound = (6 / (lin.in_features + lin.out_features)) ** 0.5  # Xavier-uniform range
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(lin.bias) == 0


def test_seed001_reduces_512_to_256_with_a_1x1_conv():
    m = sports_vgg19("seed001", num_classes=100)
    conv = m.neck[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (512, 256, (1, 1))
    assert [type(l).__name__ for l in m.head] == ["Flatten", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert m.head[-1].out_features == 100 and m.head[2].in_features == 256 * 49


def test_seed000_freezes_the_first_15_feature_modules():
    m = sports_vgg19("seed000", num_classes=5, width=0.125)
    (phase,) = recipe_phases(m, lr=1e-3, epochs=4)
    assert phase["name"] == "train" and phase["epochs"] == 4 and phase["lr"] == 1e-3
    frozen = ids(m.features[:15].parameters())
    trainable = ids(p for ps in phase["groups"].values() for p in ps)
    assert frozen and frozen.isdisjoint(trainable)
    assert trainable | frozen == ids(m.parameters())
    # features[14] is conv3_3 (the 7th conv); features[15] its ReLU; conv3_4 at 16 trains.
    assert ids(m.features[16].parameters()) <= trainable


def test_seed001_two_phases_freeze_then_unfreeze_at_a_lower_lr():
    m = sports_vgg19("seed001", num_classes=5, width=0.125)
    head, finetune = recipe_phases(m, lr=1e-3, phase1_epochs=2, phase2_epochs=3, phase2_lr_factor=0.1)
    assert (head["name"], head["epochs"], head["lr"]) == ("head", 2, 1e-3)
    assert list(head["groups"]) == ["head"]
    assert ids(head["groups"]["head"]) == ids(m.neck.parameters()) | ids(m.head.parameters())
    assert (finetune["name"], finetune["epochs"]) == ("finetune", 3)
    assert finetune["lr"] == pytest.approx(1e-4)
    assert ids(p for ps in finetune["groups"].values() for p in ps) == ids(m.parameters())


def test_freeze_layers_beyond_the_depth_is_refused():
    m = sports_vgg19("seed000", num_classes=5, width=0.125)
    assert len(parameter_groups(m, 37)["head"]) > 0 and "base" not in parameter_groups(m, 37)
    with pytest.raises(ValueError, match=r"freeze_layers=38 must be an integer in \[0, 37\]"):
        recipe_phases(m, lr=1e-3, freeze_layers=38)
    with pytest.raises(ValueError, match="every phase has 0 epochs"):
        recipe_phases(sports_vgg19("seed001", 5, width=0.125), lr=1e-3, phase1_epochs=0, phase2_epochs=0)
    with pytest.raises(ValueError, match="recipe='seed002'"):
        sports_vgg19("seed002")
