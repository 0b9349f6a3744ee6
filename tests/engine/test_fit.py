"""sportsnet.engine.fit: the run lifecycle: phases, checkpoints, NaN and signal stops, resume."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sportsnet.engine import (
    FitOptions,
    NonFiniteLossError,
    Phase,
    Validation,
    fit,
    load_checkpoint,
)
from tests.support.tiny import tiny_net, tiny_problem

CPU = torch.device("cpu")


def test_fit_saves_a_diagnostic_checkpoint_on_nan_and_keeps_the_last_good_one(tmp_path):
    torch.manual_seed(0)
    net = tiny_net()
    loader = DataLoader(tiny_problem(), batch_size=8, shuffle=True, generator=torch.Generator())
    opts = FitOptions(progress=False, channels_last=False, log_every=2)
    fit(net, [Phase("p", 1, 0.1, {"all": list(net.parameters())})], loader, loader, loss_fn=nn.functional.cross_entropy,
        device=CPU, classes=["a", "b"], run_dir=tmp_path, options=opts)
    good = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    net[0].bias.data.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step \d+ .*precision fp32\); the weights at "
                                                 r"that point are in .*nonfinite\.pt, the last good checkpoint is"):
        fit(net, [Phase("p", 2, 0.1, {"all": list(net.parameters())})], loader, loader,
            loss_fn=nn.functional.cross_entropy, device=CPU, classes=["a", "b"], run_dir=tmp_path, options=opts)
    diag = load_checkpoint(tmp_path / "checkpoints" / "nonfinite.pt")
    assert torch.isnan(diag["model"]["0.bias"]).all() and "nan" in diag["error"]
    still = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert all(torch.equal(still["model"][k], good["model"][k]) for k in good["model"])


def test_a_signal_stops_fit_after_the_current_step_with_a_resumable_checkpoint(tmp_path):
    import os
    import signal

    from sportsnet.engine import TrainingInterrupted

    def run(resume=None, stop_at=None):
        torch.manual_seed(0)
        net = tiny_net()
        loader = DataLoader(tiny_problem(), batch_size=8, shuffle=True, generator=torch.Generator())

        def loss(logits, target):  # sends SIGTERM to this process during step `stop_at`
            calls.append(1)
            if len(calls) == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return nn.functional.cross_entropy(logits, target)

        calls = []
        return net, fit(net, [Phase("p", 2, 0.05, {"all": list(net.parameters())})], loader, loader, loss_fn=loss,
                        device=CPU, classes=["a", "b"], run_dir=tmp_path / ("b" if stop_at or resume else "a"),
                        options=FitOptions(progress=False, channels_last=False), resume=resume)

    straight, _ = run()
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM: stopped at step 3/\d+ of epoch 2") as info:
        run(stop_at=len(DataLoader(tiny_problem(), batch_size=8)) + 3)  # step 3 of the second epoch
    assert info.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ckpt = load_checkpoint(info.value.checkpoint)
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 3
    resumed, result = run(resume=ckpt)
    assert result.history[-1]["epoch"] == 2
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_trains_only_each_phases_groups(tmp_path):
    torch.manual_seed(0)
    net = tiny_net()
    base, head = list(net[0].parameters()), list(net[-1].parameters())
    loader = DataLoader(tiny_problem(), batch_size=8, shuffle=True, generator=torch.Generator())
    snapshot = lambda ps: [p.detach().clone() for p in ps]  # noqa: E731
    phases = [Phase("head", 1, 0.1, {"head": head}), Phase("finetune", 1, 0.01, {"base": base, "head": head})]
    base0 = snapshot(base)
    fit(net, phases[:1], loader, loader, loss_fn=nn.functional.cross_entropy, device=CPU, classes=["a", "b"],
        run_dir=tmp_path / "a", options=FitOptions(progress=False, channels_last=False))
    assert all(torch.equal(a, b) for a, b in zip(base0, base))
    head1 = snapshot(head)
    res = fit(net, phases, loader, loader, loss_fn=nn.functional.cross_entropy, device=CPU, classes=["a", "b"],
              run_dir=tmp_path / "b", options=FitOptions(progress=False, channels_last=False))
    assert not any(torch.equal(a, b) for a, b in zip(base0, base))
    assert not all(torch.equal(a, b) for a, b in zip(head1, head))
    assert [h["phase"] for h in res.history] == [0, 1]
    ckpt = load_checkpoint(res.last_checkpoint)
    assert ckpt["epoch"] == 2 and ckpt["phase"] == 1
    assert [g["name"] for g in ckpt["optimizer"]["param_groups"]] == ["base", "head"]
    assert res.best_checkpoint.is_file()


def test_a_second_ctrl_c_stops_at_once_and_handlers_are_restored():
    import os
    import signal

    from sportsnet.engine.fit import stop_on_signals

    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as received:
        os.kill(os.getpid(), signal.SIGINT)  # the first: noted, training would finish its step
        assert received == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: now
    assert signal.getsignal(signal.SIGINT) is before


class ScaledStep:
    """A regression step (not classification): fit sees only what a TrainStep reports."""

    ddp = True

    def __call__(self, model, batch, *, device, precision, scaler):
        x, y = batch
        loss = nn.functional.mse_loss(model(x).squeeze(1), y)
        scaler.scale(loss).backward()
        return {"loss": loss.detach() * len(y), "abs_weight": model.weight.detach().abs().sum() * len(y),
                "seen": len(y)}


def test_fit_runs_any_step_and_the_validators_metric_picks_best_pt(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator())
    net = nn.Linear(4, 1)
    scores = iter([0.3, 0.9, 0.5])  # the validator decides: epoch 2 is the best

    def validate(model):
        with torch.no_grad():
            mse = float(nn.functional.mse_loss(model(x).squeeze(1), y))
        return Validation({"score": next(scores), "mse": mse})

    opts = FitOptions(progress=False, channels_last=False, log_every=2, best_metric="score", optimizer="sgd",
                      momentum=0.0, weight_decay=0.0)
    result = fit(net, [Phase("only", 3, 0.05, {"all": list(net.parameters())})], loader, device=CPU,
                 run_dir=tmp_path, options=opts, step=ScaledStep(), validate=validate, meta={"task": "regression"})
    assert (result.best_epoch, result.best_score) == (2, 0.9)
    assert [h["val_score"] for h in result.history] == [0.3, 0.9, 0.5]
    assert result.history[-1]["val_mse"] < result.history[0]["val_mse"]  # it trained
    assert {"train_loss", "train_abs_weight"} <= set(result.history[0])
    best, last = load_checkpoint(result.best_checkpoint), load_checkpoint(result.last_checkpoint)
    assert best["epoch"] == 2 and last["epoch"] == 3 and best["best_metric"] == "score"
    assert best["task"] == last["task"] == "regression" and best["classes"] == []
    with pytest.raises(ValueError, match="fit needs validate="):
        fit(net, [Phase("only", 1, 0.05, {"all": list(net.parameters())})], loader, device=CPU, run_dir=tmp_path,
            options=opts, step=ScaledStep())
