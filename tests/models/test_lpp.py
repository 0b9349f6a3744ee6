"""LP++: its step sizes are the closed-form Lipschitz constants (checked against the exact Hessian), which makes
momentum-free training a majorize-minimize descent (the loss never goes up), and it starts at zero-shot plus the
visual prototypes."""
import pytest
import torch
import torch.nn.functional as F

from sportsnet.models.lpp import LPPlusPlus, fit_lpp, lipschitz_constants


def problem(n_per_class=6, classes=3, dim=5, seed=0, draw=0):
    """Unit-norm features around class centres, and an uninformed unit-norm text classifier."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    text = F.normalize(torch.randn(dim, classes, generator=g), dim=0)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(100 + draw))
    return F.normalize(centres[labels] + 0.6 * noise, dim=-1), labels, text


def test_the_step_sizes_bound_the_exact_hessian_of_each_block():
    feats, labels, text = problem()
    l_wb, l_alpha = lipschitz_constants(feats, text)
    C, D = 3, feats.shape[1]
    f, y, t = feats.double(), labels, text.double()
    for seed in range(5):  # the bound holds wherever the parameters are
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(C, D, generator=g, dtype=torch.float64) * 3
        b = torch.randn(C, generator=g, dtype=torch.float64)
        a = torch.randn(C, generator=g, dtype=torch.float64) * 30

        def loss_wb(wb):
            return F.cross_entropy(f @ wb[:, :D].T + wb[:, D] + a * (f @ t), y)

        def loss_alpha(alpha):
            return F.cross_entropy(f @ w.T + b + alpha * (f @ t), y)

        h_wb = torch.autograd.functional.hessian(loss_wb, torch.cat([w, b[:, None]], 1)).reshape(C * (D + 1), -1)
        h_alpha = torch.autograd.functional.hessian(loss_alpha, a)
        assert torch.linalg.eigvalsh(h_wb)[-1] <= l_wb * (1 + 1e-9)
        assert torch.linalg.eigvalsh(h_alpha)[-1] <= l_alpha * (1 + 1e-9)
    # and not loose: at uniform predictions (all weights zero) the (w, b) Hessian's top eigenvalue is within 2x of it
    h0 = torch.autograd.functional.hessian(
        lambda wb: F.cross_entropy(f @ wb[:, :D].T + wb[:, D], y), torch.zeros(C, D + 1, dtype=torch.float64))
    assert torch.linalg.eigvalsh(h0.reshape(C * (D + 1), -1))[-1] >= l_wb / 2


def test_without_momentum_every_iteration_lowers_the_loss_and_it_learns():
    feats, labels, text = problem(n_per_class=8, dim=8, seed=1)
    model = LPPlusPlus(text, feats, labels)
    out = fit_lpp(model, feats, labels, steps=60, momentum=0.0)
    losses = torch.tensor(out["losses"])
    assert len(losses) == 61
    assert (losses[1:] <= losses[:-1] + 1e-6).all(), losses
    assert losses[-1] < 0.8 * losses[0]
    test_feats, test_labels, _ = problem(n_per_class=50, dim=8, seed=1, draw=1)
    zero_shot = ((test_feats @ text).argmax(1) == test_labels).float().mean()
    learned = (model(test_feats).argmax(1) == test_labels).float().mean()
    assert learned > zero_shot + 0.2, (learned, zero_shot)
    assert out["step_sizes"] == pytest.approx(tuple(1 / c for c in lipschitz_constants(feats, text)))


def test_it_starts_at_zero_shot_plus_the_visual_prototypes_and_names_bad_input():
    feats, labels, text = problem()
    model = LPPlusPlus(text, feats, labels, alpha=100.0)
    means = torch.stack([feats[labels == k].mean(0) for k in range(3)])
    x = problem(draw=3)[0]
    assert torch.allclose(model(x), x @ means.T + 100.0 * x @ text, atol=1e-5)
    with pytest.raises(ValueError, match=r"every one of the 4 classes needs a feature"):
        LPPlusPlus(F.normalize(torch.randn(5, 4), dim=0), feats, labels)
    with pytest.raises(ValueError, match=r"do not fit a \(6, 3\) text classifier"):
        LPPlusPlus(torch.randn(6, 3), feats, labels)
    with pytest.raises(ValueError, match="momentum=1.0"):
        fit_lpp(model, feats, labels, momentum=1.0)


def test_validation_keeps_the_best_iteration():
    feats, labels, text = problem(n_per_class=8, dim=8, seed=2)
    val = problem(n_per_class=20, dim=8, seed=2, draw=5)[:2]
    model = LPPlusPlus(text, feats, labels)
    out = fit_lpp(model, feats, labels, steps=40, val=val, eval_every=5)
    assert out["best_step"] % 5 == 0 and 0 < out["best_step"] <= 40
    assert (model(val[0]).argmax(1) == val[1]).float().mean().item() == pytest.approx(out["val_acc"])
