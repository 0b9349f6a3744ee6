"""sportsnet.models.adapters: linear probe, CLIP-Adapter, Tip-Adapter, WiSE-FT on cached features."""
import pytest
import torch
import torch.nn.functional as F

from sportsnet.data import few_shot_indices
from sportsnet.models.adapters import ClipAdapter, LinearProbe, TipAdapter, wise_ft, zero_shot_linear


def features(n=40, d=32, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % c
    centres = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    feats = F.normalize(centres[labels] + 0.3 * torch.randn(n, d, generator=g), dim=-1)
    W = F.normalize(torch.randn(d, c, generator=g), dim=0)
    return feats, labels, W


def test_clip_adapter_with_ratio_zero_is_the_zero_shot_head():
    feats, _, W = features()
    zero_shot = 20 * feats @ W
    torch.testing.assert_close(ClipAdapter(W, 20.0, ratio=0.0)(feats), zero_shot)
    assert not torch.allclose(ClipAdapter(W, 20.0, ratio=0.5)(feats), zero_shot)


def test_tip_adapter_alpha_zero_is_zero_shot_and_the_cache_matches_the_formula():
    feats, labels, W = features()
    keys, key_labels = feats[:8], labels[:8]
    torch.testing.assert_close(TipAdapter(W, 20.0, keys, key_labels, alpha=0.0)(feats), 20 * feats @ W)
    tip = TipAdapter(W, 20.0, keys, key_labels, alpha=2.0, beta=5.0)
    cache = torch.exp(-5.0 * (1 - feats @ keys.T)) @ F.one_hot(key_labels, 4).float()
    torch.testing.assert_close(tip(feats), 20 * feats @ W + 2.0 * cache)
    assert isinstance(TipAdapter(W, 20.0, keys, key_labels, learn_keys=True).keys, torch.nn.Parameter)


def test_wise_ft_interpolates_heads():
    _, _, W = features()
    zs = zero_shot_linear(W, 10.0)
    ft = LinearProbe(32, 4).linear
    torch.testing.assert_close(wise_ft(zs, ft, 0.0).weight, zs.weight)
    torch.testing.assert_close(wise_ft(zs, ft, 1.0).weight, ft.weight)
    torch.testing.assert_close(wise_ft(zs, ft, 0.25).bias, 0.75 * zs.bias + 0.25 * ft.bias)


def test_k_shot_sampler_on_feature_labels():
    labels = torch.tensor([0] * 5 + [1] * 9 + [2] * 3)
    idx = few_shot_indices(labels.tolist(), 3, seed=4)
    assert torch.bincount(labels[idx]).tolist() == [3, 3, 3]
    assert idx == few_shot_indices(labels.tolist(), 3, seed=4) != few_shot_indices(labels.tolist(), 3, seed=5)
    with pytest.raises(ValueError, match=r"k=4 .*'c' has 3"):
        few_shot_indices(labels.tolist(), 4, classes=["a", "b", "c"])
