"""sportsnet.engine.optim: named parameter groups and the warmup + cosine schedule."""
import math

import pytest
import torch
from torch import nn

from sportsnet.engine import (
    build_optimizer,
    warmup_cosine,
)


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


def test_groups_carry_their_own_settings_and_adamw_its_betas():
    decay, no_decay = nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(3))
    opt = build_optimizer({"decay": {"params": [decay], "weight_decay": 0.2}, "no_decay": {"params": [no_decay],
                                                                                          "weight_decay": 0.0}},
                          "adamw", lr=1e-3, weight_decay=0.5, betas=(0.9, 0.98), eps=1e-6)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.2 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 and g["lr"] == 1e-3 for g in groups.values())
    empty = build_optimizer({"a": [decay], "b": {"params": []}}, "sgd", lr=0.1)
    assert [g["name"] for g in empty.param_groups] == ["a"]  # empty groups are left out
