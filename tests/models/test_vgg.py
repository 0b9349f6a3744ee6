import pytest
import torch
import torchvision

from sportsnet.models import vgg11, vgg13, vgg16, vgg19

BUILDERS = {"vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg19": vgg19}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_state_dict_keys_and_shapes_match_torchvision(name, batch_norm):
    with torch.device("meta"):  # no memory, no init cost: only names and shapes
        ours = BUILDERS[name](batch_norm=batch_norm).state_dict()
        tv_name = name + ("_bn" if batch_norm else "")
        theirs = getattr(torchvision.models, tv_name)(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_vgg19_loads_torchvision_weights_strictly_and_gives_the_same_logits():
    torch.manual_seed(0)
    theirs = torchvision.models.vgg19(weights=None).eval()
    ours = vgg19().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == 143_667_240
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x)), ours(x))
    assert ours.arch == "vgg19"


def test_width_scales_every_conv_and_the_hidden_layers():
    m = vgg19(10, width=0.125, batch_norm=True)
    convs = [c.out_channels for c in m.features if isinstance(c, torch.nn.Conv2d)]
    assert convs == [8, 8, 16, 16, 32, 32, 32, 32] + [64] * 8
    assert m.classifier[0].in_features == 64 * 49 and m.classifier[0].out_features == 512
    feats = m.forward_features(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 64, 2, 2)
    assert m.forward_head(feats).shape == (2, 10)
    assert m.arch == "vgg19_bn"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="width=0 must be > 0"):
        vgg19(width=0)
    with pytest.raises(ValueError, match="num_classes=0"):
        vgg19(0)
