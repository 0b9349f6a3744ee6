import pytest
import torch
from torch import nn

from sportsnet.models import RECIPE_ALIASES, RECIPES, canonical_recipe, parameter_groups, recipe_phases, sports_vgg19


def ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("recipe, neck_channels", [("frozen-bn-head", 64), ("reduce256-two-phase", 32)])
def test_heads_give_the_right_shapes(recipe, neck_channels):
    m = sports_vgg19(recipe, num_classes=7, width=0.125).eval()
    x = torch.randn(3, 3, 64, 64)
    feats = m.forward_features(x)
    assert feats.shape == (3, neck_channels, 2, 2)
    assert m(x).shape == (3, 7)
    torch.testing.assert_close(m.forward_head(feats), m(x))


def test_frozen_bn_head_layers_and_xavier_init():
    m = sports_vgg19("frozen-bn-head", num_classes=100)
    assert isinstance(m.neck, nn.Dropout2d)
    kinds = [type(layer).__name__ for layer in m.head]
    # head[0]: forward_head flattens; the Identity keeps the indices of checkpoints saved with a Flatten there.
    assert kinds == ["Identity", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    lin = m.head[2]
    assert (lin.in_features, lin.out_features) == (512 * 49, 1024)
    bound = (6 / (lin.in_features + lin.out_features)) ** 0.5  # Xavier-uniform range
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(lin.bias) == 0


def test_reduce256_two_phase_reduces_512_to_256_with_a_1x1_conv():
    m = sports_vgg19("reduce256-two-phase", num_classes=100)
    conv = m.neck[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (512, 256, (1, 1))
    assert [type(layer).__name__ for layer in m.head] == ["Identity", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert m.head[-1].out_features == 100 and m.head[2].in_features == 256 * 49


def test_frozen_bn_head_freezes_the_first_15_feature_modules():
    m = sports_vgg19("frozen-bn-head", num_classes=5, width=0.125)
    (phase,) = recipe_phases(m, lr=1e-3, epochs=4)
    assert phase["name"] == "train" and phase["epochs"] == 4 and phase["lr"] == 1e-3
    frozen = ids(m.features[:15].parameters())
    trainable = ids(p for ps in phase["groups"].values() for p in ps)
    assert frozen and frozen.isdisjoint(trainable)
    assert trainable | frozen == ids(m.parameters())
    # features[14] is conv3_3 (the 7th conv); features[15] its ReLU; conv3_4 at 16 trains.
    assert ids(m.features[16].parameters()) <= trainable


def test_reduce256_two_phases_freeze_then_unfreeze_at_a_lower_lr():
    m = sports_vgg19("reduce256-two-phase", num_classes=5, width=0.125)
    head, finetune = recipe_phases(m, lr=1e-3, phase1_epochs=2, phase2_epochs=3, phase2_lr_factor=0.1)
    assert (head["name"], head["epochs"], head["lr"]) == ("head", 2, 1e-3)
    assert list(head["groups"]) == ["head"]
    assert ids(head["groups"]["head"]) == ids(m.neck.parameters()) | ids(m.head.parameters())
    assert (finetune["name"], finetune["epochs"]) == ("finetune", 3)
    assert finetune["lr"] == pytest.approx(1e-4)
    assert ids(p for ps in finetune["groups"].values() for p in ps) == ids(m.parameters())


def test_freeze_layers_beyond_the_depth_is_refused():
    m = sports_vgg19("frozen-bn-head", num_classes=5, width=0.125)
    assert len(parameter_groups(m, 37)["head"]) > 0 and "base" not in parameter_groups(m, 37)
    with pytest.raises(ValueError, match=r"freeze_layers=38 must be an integer in \[0, 37\]"):
        recipe_phases(m, lr=1e-3, freeze_layers=38)
    with pytest.raises(ValueError, match="every phase has 0 epochs"):
        recipe_phases(sports_vgg19("reduce256-two-phase", 5, width=0.125), lr=1e-3, phase1_epochs=0, phase2_epochs=0)
    with pytest.raises(ValueError, match="recipe='seed002' is not one of .*'frozen-bn-head'.*'seed000'"):
        sports_vgg19("seed002")


def test_recipe_names_say_what_they_are_and_the_seed_names_stay_aliases():
    assert RECIPES == ("frozen-bn-head", "reduce256-two-phase")
    assert RECIPE_ALIASES == {"seed000": "frozen-bn-head", "seed001": "reduce256-two-phase"}
    assert [canonical_recipe(n) for n in (*RECIPES, *RECIPE_ALIASES)] == [*RECIPES, *RECIPES]
    assert sports_vgg19(width=0.125).recipe == "reduce256-two-phase"  # the default, as before (seed001)
    expected = (r"is not one of \('frozen-bn-head', 'reduce256-two-phase'\) \(or the aliases 'seed000' for "
                r"'frozen-bn-head', 'seed001' for 'reduce256-two-phase'\)")
    for name in (None, "", "Frozen-BN-Head", "seed002"):
        with pytest.raises(ValueError, match=rf"recipe={name!r} {expected}"):
            canonical_recipe(name)


@pytest.mark.parametrize("old, new", [("seed000", "frozen-bn-head"), ("seed001", "reduce256-two-phase")])
def test_old_names_build_the_same_model_and_old_checkpoints_load(old, new):
    torch.manual_seed(0)
    by_alias = sports_vgg19(old, num_classes=5, width=0.125)
    torch.manual_seed(0)
    by_name = sports_vgg19(new, num_classes=5, width=0.125)
    assert by_alias.recipe == new
    assert list(by_alias.state_dict()) == list(by_name.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(by_alias.state_dict().values(), by_name.state_dict().values()))
    # A checkpoint of the model as it was, with an nn.Flatten in head[0]: the same keys (head.2.weight...),
    # so a strict load takes it.
    by_alias.head[0] = nn.Flatten()
    with torch.no_grad():
        for t in by_alias.parameters():
            t.add_(torch.randn_like(t))
    assert "head.2.weight" in by_alias.state_dict()
    by_name.load_state_dict(by_alias.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(by_name.eval()(x), by_alias.eval()(x))
    phases = recipe_phases(by_alias, lr=1e-3)
    assert [p["name"] for p in phases] == (["train"] if new == "frozen-bn-head" else ["head", "finetune"])
