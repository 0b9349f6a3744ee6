import pickle
import urllib.error

import pytest
import torch
import torchvision

from sportsnet.models import hub_checkpoint_path, load_imagenet_weights, sports_vgg19, vgg19, weights
from sportsnet.serialization import NotATorchFileError, UnsafeFileError
from tests.support.trees import write_malicious_pickle


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    """A torchvision VGG19 state dict on disk, standing in for vgg19-dcbb9e9d.pth (random weights)."""
    torch.manual_seed(1)
    model = torchvision.models.vgg19(weights=None).eval()
    path = tmp_path_factory.mktemp("weights") / "torchvision_vgg19.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_local_file_loads_into_plain_vgg19_with_identical_outputs(tv_weights):
    path, tv = tv_weights
    ours = vgg19().eval()
    report = load_imagenet_weights(ours, path)
    assert report.unused == [] and len(report.loaded) == len(tv.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), atol=1e-5, rtol=0)


def test_seed_models_take_the_conv_base_and_leave_the_new_head(tv_weights):
    path, tv = tv_weights
    m = sports_vgg19("reduce256-two-phase", num_classes=100)
    head_before = {k: v.clone() for k, v in m.head.state_dict().items()}
    report = load_imagenet_weights(m, path)
    for k, v in tv.features.state_dict().items():
        assert torch.equal(m.features.state_dict()[k], v)
    assert all(torch.equal(m.head.state_dict()[k], v) for k, v in head_before.items())
    assert report.unused == [f"classifier.{i}.{w}" for i in (0, 3, 6) for w in ("bias", "weight")]


def test_grayscale_stem_equals_the_rgb_model_on_a_gray_image(tv_weights):
    path, _ = tv_weights
    rgb = sports_vgg19("frozen-bn-head", num_classes=10)
    gray = sports_vgg19("frozen-bn-head", num_classes=10, grayscale=True)
    load_imagenet_weights(rgb, path)
    assert load_imagenet_weights(gray, path).summed_rgb_stem
    gray.head.load_state_dict(rgb.head.state_dict())
    assert gray.features[0].weight.shape == (64, 1, 3, 3)
    torch.testing.assert_close(gray.features[0].weight, rgb.features[0].weight.sum(1, keepdim=True))
    x = torch.randn(2, 1, 64, 64)  # a normalised gray image: the same value in every RGB channel
    rgb.eval(), gray.eval()
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_narrow_models_cannot_take_imagenet_weights(tv_weights):
    with pytest.raises(ValueError, match=r"shape mismatch.*need width=1.0"):
        load_imagenet_weights(vgg19(width=0.5), tv_weights[0])
    with pytest.raises(ValueError, match=r"32 shape mismatches: \['features.0.weight: file \(64, 3, 3, 3\) vs model "
                                         r"\(32, 3, 3, 3\)', .*\] \(\+29 more\) \(ImageNet weights need width=1.0"):
        load_imagenet_weights(vgg19(width=0.5), tv_weights[0])


def test_a_file_missing_conv_base_tensors_names_them(tv_weights, tmp_path):
    state = dict(tv_weights[1].state_dict())
    del state["features.0.weight"], state["features.2.bias"]
    torch.save(state, tmp_path / "partial.pth")
    for model in (vgg19(), sports_vgg19("frozen-bn-head", num_classes=3, grayscale=True)):  # a gray stem too
        with pytest.raises(ValueError, match=r"does not fit the conv base of this \w+: 2 missing from the file: "
                                             r"\['features.0.weight', 'features.2.bias'\]"):
            load_imagenet_weights(model, tmp_path / "partial.pth")


def test_a_file_that_is_not_a_torch_file_is_named(tmp_path):
    (tmp_path / "vgg19.pth").write_text("<html>404 Not Found</html>")
    with pytest.raises(NotATorchFileError, match=r"weights file '.*vgg19\.pth' is not a torch file"):
        load_imagenet_weights(vgg19(), tmp_path / "vgg19.pth")


def test_offline_download_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, hash_prefix=None, progress=True):  # torch's downloader, as it fails offline
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    # The host answers (so this test never touches the network); the download itself fails.
    monkeypatch.setattr(weights, "check_reachable", lambda url, **kw: None)
    expected = hub_checkpoint_path("vgg19")
    assert expected == tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(FileNotFoundError, match=rf"put it at {expected}"):
        load_imagenet_weights(vgg19(width=1.0, num_classes=10), "imagenet")


def test_a_corrupt_cached_download_is_detected_by_its_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = hub_checkpoint_path("vgg19")
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="SHA-256 does not start with dcbb9e9d"):
        load_imagenet_weights(vgg19(), "imagenet")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    evil, marker = tmp_path / "vgg19.pth", tmp_path / "pwned"
    write_malicious_pickle(evil, "features.0.weight", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed") as info:
        load_imagenet_weights(vgg19(), evil)
    assert isinstance(info.value, UnsafeFileError) and "refusing to load" in str(info.value)
    assert not marker.exists()
