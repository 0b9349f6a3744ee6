"""A two-class problem a tiny conv net learns in a few steps (engine tests)."""
import torch
from torch import nn
from torch.utils.data import TensorDataset


def tiny_problem(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 1.5
    return TensorDataset(x, y)


def tiny_net(batch_norm=False):
    layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if batch_norm else []) + [
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)]
    return nn.Sequential(*layers)
