"""sportsnet.engine.loop: run_epoch with a step, evaluate, NaN detection, precision, frozen BatchNorm."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sportsnet.engine import (
    NonFiniteLossError,
    build_optimizer,
    evaluate,
    run_epoch,
    train_one_epoch,
)
from tests.support.tiny import tiny_net, tiny_problem

CPU = torch.device("cpu")


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


def test_nan_loss_is_caught_at_the_log_step_with_lr_and_precision():
    torch.manual_seed(0)
    net = tiny_net()
    net[0].bias.data.fill_(float("nan"))
    opt = build_optimizer({"head": list(net.parameters())}, "sgd", lr=0.1)
    loader = DataLoader(tiny_problem(), batch_size=8)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step 4 \(lr head=0.1, precision fp32\)"):
        train_one_epoch(net, loader, opt, nn.functional.cross_entropy, device=CPU, log_every=4, progress=False)


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


def test_run_epoch_averages_what_the_step_reports_and_calls_after_step():
    class Step:
        ddp = True
        after = 0

        def __call__(self, model, batch, *, device, precision, scaler):
            x, y = batch
            loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            return {"loss": loss.detach() * len(y), "ones": torch.tensor(float(len(y))), "seen": len(y)}

        def after_step(self, model):
            self.after += 1

    torch.manual_seed(0)
    net, step = tiny_net(), Step()
    opt = build_optimizer({"all": list(net.parameters())}, "sgd", lr=0.1)
    stats = run_epoch(net, DataLoader(tiny_problem(), batch_size=16), opt, step, device=CPU, log_every=2,
                      progress=False)
    assert stats.steps == step.after == 4 and stats.images == 64 and len(stats.logs) == 2
    assert stats.metrics["ones"] == 1.0 and stats.logs[0].metrics["ones"] == 1.0  # sum / seen
    assert math.isnan(stats.acc1) and stats.loss == stats.metrics["loss"]
