import errno
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sportsnet.engine import (CheckpointWriteError, FitOptions, NonFiniteLossError, Phase, build_optimizer,
                              capture_rng_state, evaluate, fit, load_checkpoint, restore_rng_state,
                              save_checkpoint, train_one_epoch, warmup_cosine)
from trees import write_malicious_pickle

CPU = torch.device("cpu")


def test_warmup_then_cosine_to_the_floor():
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer({"head": [p]}, "sgd", lr=1.0, momentum=0.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=3, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 6 / 7)))


def test_optimizer_groups_are_named_and_scaled():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    opt = build_optimizer({"base": [a], "head": [b], "empty": []}, "adamw", lr=0.01, lr_scale={"base": 0.1})
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("base", pytest.approx(0.001)), ("head", 0.01)]
    with pytest.raises(ValueError, match="optimizer='lamb'"):
        build_optimizer({"head": [b]}, "lamb")
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer({"head": []})


def test_checkpoint_save_is_atomic_when_the_disk_fills(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def full_disk(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="disk is full; the previous last.pt is intact"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind


def test_load_checkpoint_refuses_code_execution(tmp_path):
    evil, marker = tmp_path / "ckpt.pt", tmp_path / "pwned"
    write_malicious_pickle(evil, "model", marker)
    with pytest.raises(RuntimeError, match="refusing to load .*weights_only=True"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


class Fixed(nn.Module):
    """Logits that rank class (t + shift) % C first, then t, for a target t smuggled in channel 0."""

    def __init__(self, num_classes, shift):
        super().__init__()
        self.c, self.shift = num_classes, shift

    def forward(self, x):
        t = x[:, 0, 0, 0].long()
        logits = torch.zeros(x.shape[0], self.c)
        logits[torch.arange(len(t)), t] = 1.0
        logits[torch.arange(len(t)), (t + self.shift) % self.c] += 2.0
        return logits


def test_evaluate_counts_top1_top5_and_the_confusion_matrix():
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    x = targets.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    loader = DataLoader(TensorDataset(x, targets), batch_size=4)
    res = evaluate(Fixed(4, shift=1), loader, device=CPU, num_classes=4, progress=False)
    assert res.acc1 == 0 and res.acc5 == 1 and res.images == 6
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for t in targets.tolist():
        expected[t, (t + 1) % 4] += 1
    assert torch.equal(res.confusion, expected)
    res = evaluate(Fixed(4, shift=0), loader, device=CPU, num_classes=4, progress=False)
    assert res.acc1 == 1 and res.per_class_accuracy.tolist() == [1.0] * 4


def tiny_problem(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 1.5
    return TensorDataset(x, y)


def tiny_net(batch_norm=False):
    layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if batch_norm else []) + [
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)]
    return nn.Sequential(*layers)


def test_nan_loss_is_caught_at_the_log_step_with_lr_and_precision():
    torch.manual_seed(0)
    net = tiny_net()
    net[0].bias.data.fill_(float("nan"))
    opt = build_optimizer({"head": list(net.parameters())}, "sgd", lr=0.1)
    loader = DataLoader(tiny_problem(), batch_size=8)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step 4 \(lr head=0.1, precision fp32\)"):
        train_one_epoch(net, loader, opt, nn.functional.cross_entropy, device=CPU, log_every=4, progress=False)


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


def test_frozen_batch_norm_keeps_its_running_statistics():
    torch.manual_seed(0)
    net = tiny_net(batch_norm=True)
    bn = net[1]
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)
    before = bn.running_mean.clone()
    opt = build_optimizer({"head": [p for p in net.parameters() if p.requires_grad]}, "sgd", lr=0.1)
    train_one_epoch(net, DataLoader(tiny_problem(), batch_size=8), opt, nn.functional.cross_entropy,
                    device=CPU, progress=False)
    assert torch.equal(bn.running_mean, before)


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
    assert ckpt["epoch"] == 2 and ckpt["phase"] == 1 and [g["name"] for g in ckpt["optimizer"]["param_groups"]] == ["base", "head"]
    assert res.best_checkpoint.is_file()


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    net = tiny_net()
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    opt = build_optimizer({"head": list(net.parameters())}, "sgd", lr=1.0, momentum=0.0, weight_decay=0.0)
    loader = DataLoader(tiny_problem(n=8), batch_size=8)  # one step
    train_one_epoch(net, loader, opt, nn.functional.cross_entropy, device=CPU, grad_clip=1e-3, progress=False)
    step = torch.cat([p.detach().flatten() for p in net.parameters()]) - before
    assert 0 < step.norm() <= 1e-3 * (1 + 1e-4)


@pytest.mark.parametrize("precision, scaled", [("fp16", True), ("bf16", False), ("fp32", False)])
def test_only_fp16_scales_the_loss_and_every_precision_learns(precision, scaled):
    torch.manual_seed(0)
    net = tiny_net()
    opt = build_optimizer({"head": list(net.parameters())}, "adamw", lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    loader = DataLoader(tiny_problem(n=256), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    stats = [train_one_epoch(net, loader, opt, nn.functional.cross_entropy, device=CPU, precision=precision,
                             scaler=scaler, channels_last=False, progress=False) for _ in range(3)]
    assert scaler.is_enabled() == scaled
    assert stats[-1].loss < stats[0].loss and stats[-1].acc1 > 0.9


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
