"""sportsnet.engine.features: features encoded once and cached, heads fitted on them."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sportsnet.engine.features import FeatureCache, extract_features, fit_logistic, head_accuracy, train_head

CPU = torch.device("cpu")


def blobs(n=120, d=8, classes=3, seed=0):
    """Linearly separable features: one Gaussian blob per class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=g) * 4
    return centres[labels] + torch.randn(n, d, generator=g), labels


def test_extract_features_keeps_loader_order_and_returns_float32_on_cpu():
    images = torch.randn(10, 3, 4, 4)
    loader = DataLoader(TensorDataset(images, torch.arange(10)), batch_size=3)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    feats, labels = extract_features(encoder, loader, device=CPU, precision="bf16", progress=False)
    assert feats.dtype == torch.float32 and feats.shape == (10, 5) and labels.tolist() == list(range(10))
    with torch.no_grad():
        torch.testing.assert_close(feats, encoder(images), atol=0.1, rtol=0.05)  # bf16 autocast
    with pytest.raises(ValueError, match="no batches"):
        extract_features(encoder, [], device=CPU, progress=False)


def test_the_cache_computes_once_per_key_and_a_changed_key_recomputes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.randn(4, 2), torch.arange(4)

    cache = FeatureCache(tmp_path / "features")
    a = cache.get("model|weights|files", compute)
    b = cache.get("model|weights|files", compute)
    assert len(calls) == 1 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    cache.get("model|other weights|files", compute)
    assert len(calls) == 2 and len(list((tmp_path / "features").glob("*.pt"))) == 2
    FeatureCache(None).get("k", compute)  # no folder: no cache
    FeatureCache(None).get("k", compute)
    assert len(calls) == 4


def test_train_head_learns_separable_features_and_keeps_the_best_validation_state():
    feats, labels = blobs()
    head = nn.Linear(8, 3)
    torch.manual_seed(0)
    out = train_head(head, feats[:90], labels[:90], steps=60, lr=1e-2, val=(feats[90:], labels[90:]), eval_every=10)
    assert out["steps"] == 60 and out["val_acc"] == head_accuracy(head, feats[90:], labels[90:]) >= 0.9
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_head(nn.Identity(), feats, labels)


def test_fit_logistic_separates_the_blobs_and_l2_shrinks_the_weights():
    feats, labels = blobs()
    weak = fit_logistic(nn.Linear(8, 3), feats, labels, l2=1e-4)
    strong = fit_logistic(nn.Linear(8, 3), feats, labels, l2=1.0)
    assert head_accuracy(weak, feats, labels) == 1.0
    assert strong.weight.norm() < weak.weight.norm()
