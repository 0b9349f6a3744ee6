"""GDA's closed form against scikit-learn's LinearDiscriminantAnalysis on the same features, and its blend with
zero-shot."""
import pytest
import torch
import torch.nn.functional as F

from sportsnet.models.gda import GDA, gda_classifier, paper_shrinkage

discriminant_analysis = pytest.importorskip("sklearn.discriminant_analysis",
                                            reason="scikit-learn (through quantus, the test extra) is the reference")


def few_shot(n_per_class: int, classes: int = 4, dim: int = 16, seed: int = 0, draw: int = 0):
    """Unit-norm features around ``classes`` centres (``seed``), noise from ``draw``."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(1000 + draw))
    feats = F.normalize(centres[labels] + 0.5 * noise, dim=-1)
    return feats.double(), labels


@pytest.mark.parametrize("shots, shrinkage", [(40, 0.0), (40, 0.3), (2, 0.3)],
                         ids=["full-rank", "full-rank-shrunk", "singular-shrunk"])
def test_weights_equal_scikit_learns_lda(shots, shrinkage):
    feats, labels = few_shot(shots)
    lda = discriminant_analysis.LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage or None)
    lda.fit(feats.numpy(), labels.numpy())
    weight, bias = gda_classifier(feats, labels, 4, shrinkage)
    assert torch.allclose(weight, torch.from_numpy(lda.coef_), rtol=1e-7, atol=1e-8)
    assert torch.allclose(bias, torch.from_numpy(lda.intercept_), rtol=1e-7, atol=1e-8)
    scores = feats @ weight.T + bias
    assert torch.equal(scores.argmax(1), torch.from_numpy(lda.predict(feats.numpy())))


def test_priors_and_bad_input_are_named():
    """Priors move only the biases, by their log ratio to the classes' frequencies (here equal). (scikit-learn
    also weights the class covariances by given priors; with equal shots per class the two agree.)"""
    feats, labels = few_shot(5)
    priors = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    weight, bias = gda_classifier(feats, labels, 4, 0.2)
    weight_p, bias_p = gda_classifier(feats, labels, 4, 0.2, priors=priors)
    assert torch.equal(weight, weight_p)
    assert torch.allclose(bias_p - bias, torch.log(priors / 0.25), atol=1e-12)
    with pytest.raises(ValueError, match="one shot per class: the within-class covariance is zero"):
        gda_classifier(*few_shot(1), 4, 0.5)
    with pytest.raises(ValueError, match=r"classes \[4\] have no features"):
        gda_classifier(feats, labels, 5)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        gda_classifier(feats, labels, 3)
    with pytest.raises(ValueError, match="shrinkage=1.5 must be in"):
        gda_classifier(feats, labels, 4, 1.5)


def test_alpha_zero_is_zero_shot_and_the_shots_lift_accuracy():
    feats, labels = few_shot(8, dim=16, seed=1)
    text = F.normalize(torch.randn(16, 4, generator=torch.Generator().manual_seed(2)), dim=0)  # an uninformed head
    test_feats, test_labels = few_shot(50, dim=16, seed=1, draw=1)  # new draws, same classes
    zero = GDA(text, 100.0, feats.float(), labels, alpha=0.0)
    assert torch.equal(zero(test_feats.float()), 100.0 * test_feats.float() @ text)
    head = GDA(text, 100.0, feats.float(), labels, alpha=100.0)
    accuracy = lambda m: (m(test_feats.float()).argmax(1) == test_labels).float().mean()  # noqa: E731
    assert accuracy(head) > accuracy(zero) + 0.3 and accuracy(head) > 0.8


def test_the_default_is_the_papers_estimator_up_to_scale():
    """The GDA paper's precision, D * pinv(scatter + trace(S) I), written out here: its classifier's weights and
    quadratic biases are ours under the default shrinkage times one constant (uniform priors add the same log to
    every class)."""
    feats, labels = few_shot(3, dim=16)  # 12 features of 16 dimensions: a singular covariance
    N, D = feats.shape
    means = torch.stack([feats[labels == k].mean(0) for k in range(4)])
    centred = feats - means[labels]
    cov = centred.T.cov()
    precision = D * torch.linalg.pinv((N - 1) * cov + cov.trace() * torch.eye(D, dtype=feats.dtype))
    theirs_w = means @ precision
    theirs_b = -0.5 * (means @ precision * means).sum(1)
    weight, bias = gda_classifier(feats, labels, 4, paper_shrinkage(N, D))
    scale = theirs_w.norm() / weight.norm()
    assert torch.allclose(weight * scale, theirs_w, rtol=1e-9, atol=1e-12)
    assert torch.allclose((bias - torch.log(torch.tensor(0.25, dtype=feats.dtype))) * scale, theirs_b, rtol=1e-9)
