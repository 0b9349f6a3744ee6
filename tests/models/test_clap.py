"""CLAP: untrained it is the zero-shot classifier; its multipliers are the zero-shot classifier's mean
right-class probability per class; the penalty holds classes near their zero-shot prototypes in proportion to
them; no validation split is needed."""
import pytest
import torch

from sportsnet.models.clap import ZeroShotLinearProbe, clap_multipliers, fit_clap
from tests.models.test_lpp import problem


def test_untrained_it_is_the_zero_shot_classifier():
    feats, _, text = problem(dim=8)
    head = ZeroShotLinearProbe(text, 100.0)
    assert torch.allclose(head(feats), 100.0 * feats @ text, atol=1e-5)
    assert head.penalty(torch.ones(3)).item() == 0.0


def test_multipliers_are_the_mean_zero_shot_probability_of_the_right_class():
    feats, labels, text = problem(n_per_class=4, dim=8)
    logits = 50.0 * feats @ text
    lambdas = clap_multipliers(logits, labels)
    for k in range(3):
        p = logits[labels == k].softmax(1)[:, k]
        assert lambdas[k].item() == pytest.approx(p.mean().item(), abs=1e-6)
    with pytest.raises(ValueError, match=r"every one of the 4 classes needs a support feature"):
        clap_multipliers(torch.randn(12, 4), labels)


def test_the_penalty_keeps_a_class_near_zero_shot_by_its_multiplier():
    feats, labels, text = problem(n_per_class=8, dim=8, seed=3)

    def moved(lambdas):
        head = ZeroShotLinearProbe(text, 100.0)
        fit_clap(head, feats, labels, lambdas=lambdas, epochs=40, batch_size=8)
        return (head.prototypes - head.anchors).norm(dim=1)

    free = moved(None)  # ZS-LP
    held = moved(torch.tensor([50.0, 0.0, 0.0]))
    assert held[0] < 0.2 * free[0], (held, free)  # the constrained class barely moves ...
    assert held[1] > 0.5 * free[1]  # ... the others are as free as in ZS-LP


def test_it_learns_without_a_validation_split_and_names_bad_input():
    feats, labels, text = problem(n_per_class=8, dim=8, seed=1)
    head = ZeroShotLinearProbe(text, 100.0)
    lambdas = clap_multipliers(head(feats).detach(), labels)
    out = fit_clap(head, feats, labels, lambdas=lambdas, epochs=30, batch_size=8)
    assert out["val_acc"] is None and out["steps"] == 30 * 3
    test_feats, test_labels, _ = problem(n_per_class=50, dim=8, seed=1, draw=1)
    zero_shot = ((test_feats @ text).argmax(1) == test_labels).float().mean()
    assert (head(test_feats).argmax(1) == test_labels).float().mean() > zero_shot + 0.2
    with pytest.raises(ValueError, match=r"lambdas \(2,\) must be one per class \(3,\)"):
        fit_clap(head, feats, labels, lambdas=torch.ones(2))
