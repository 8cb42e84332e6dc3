"""Small PyTorch nets for the pruning tests, and a helper that silences channels exactly."""

from __future__ import annotations

import torch
from torch import nn


def silence(conv: nn.Module, bn: nn.Module | None, channels) -> None:
    """Make output ``channels`` of ``conv`` (+ ``bn``) exactly zero: weights, bias, gamma, beta.

    After BN folding the channel's weight and bias are 0, so it outputs exactly 0 (and 0 after
    ReLU/ReLU6), and removing it changes nothing downstream.
    """
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0
        if bn is not None:
            bn.weight[channels] = 0
            bn.bias[channels] = 0


def _cbr(cin, cout, k=3, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6() if act == "relu6" else nn.ReLU()) if act \
        else nn.Sequential(*layers)


class ResNetish(nn.Module):
    """Stem, a basic block with an identity residual, a strided block with a 1x1 downsample."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = _cbr(3, c)
        self.b1a, self.b1b = _cbr(c, c), _cbr(c, c, act=False)
        self.b2a, self.b2b = _cbr(c, 2 * c, stride=2), _cbr(2 * c, 2 * c, act=False)
        self.down = _cbr(c, 2 * c, k=1, stride=2, act=False)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b1b(self.b1a(x)))
        x = torch.relu(self.down(x) + self.b2b(self.b2a(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MobileNetish(nn.Module):
    """Stem, two inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1)."""

    def __init__(self, c=16, t=4):
        super().__init__()
        self.stem = _cbr(3, c, act="relu6")
        self.blocks = nn.ModuleList(
            nn.ModuleList([_cbr(c, t * c, 1, act="relu6"),
                           _cbr(t * c, t * c, 3, groups=t * c, act="relu6"),
                           _cbr(t * c, c, 1, act=False)]) for _ in range(2))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for expand, dw, project in self.blocks:
            x = x + project(dw(expand(x)))
        return self.fc(x.mean((2, 3)))


class Concatish(nn.Module):
    """Inception (two branches concatenated) then DenseNet (input concatenated with a conv)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = _cbr(3, c)
        self.a, self.b = _cbr(c, c, 1), _cbr(c, c, 3)
        self.dense = _cbr(2 * c, c)
        self.head = nn.Conv2d(3 * c, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = torch.cat([x, self.dense(x)], 1)
        x = torch.relu(self.head(nn.functional.adaptive_avg_pool2d(x, 4)))
        return self.fc(torch.flatten(x, 1))


class DigitsCNN(nn.Module):
    """8x8 digits: two conv stages, a flatten into a hidden Linear, then the classifier."""

    def __init__(self, c=(16, 32, 32), hidden=64):
        super().__init__()
        self.c1 = nn.Conv2d(1, c[0], 3, padding=1)
        self.c2 = nn.Conv2d(c[0], c[1], 3, padding=1)
        self.c3 = nn.Conv2d(c[1], c[2], 3, padding=1)
        self.fc1 = nn.Linear(c[2] * 16, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.c3(nn.functional.max_pool2d(x, 2)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))
