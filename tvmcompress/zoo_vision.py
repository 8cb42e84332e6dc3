"""ResNet-18 and MobileNetV2 in torchvision's layout, random weights, built in PyTorch: the
ImageNet-sized CNNs the benchmarks and the pruning/int8 issues measure against onnxruntime.

Needs the ``torch`` extra. Seeded; BatchNorm gets non-trivial scales and statistics so that
folding and the BN-scale pruning criterion see realistic values.
"""

from __future__ import annotations

import onnx

from tvmcompress import zoo


def _cbr(cin, cout, k, s=1, groups=1, act="relu"):
    from torch import nn

    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU() if act == "relu" else nn.ReLU6())
    return nn.Sequential(*layers)


def _blocks():
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, s):
            super().__init__()
            self.a, self.b = _cbr(cin, cout, 3, s), _cbr(cout, cout, 3, act=None)
            self.down = _cbr(cin, cout, 1, s, act=None) if s != 1 or cin != cout else None

        def forward(self, x):
            return torch.relu(self.b(self.a(x)) + (self.down(x) if self.down else x))

    class Inverted(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            mid = cin * t
            expand = [_cbr(cin, mid, 1, act="relu6")] if t != 1 else []
            self.body = nn.Sequential(*expand, _cbr(mid, mid, 3, s, groups=mid, act="relu6"),
                                      _cbr(mid, cout, 1, act=None))
            self.residual = s == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    return Basic, Inverted


def resnet18(num_classes: int = 1000):
    """ResNet-18 (basic blocks 64-128-256-512, 1x1 strided downsampling) as a torch module."""
    from torch import nn

    basic, _ = _blocks()
    layers, cin = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for cout, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [basic(cin, cout, s), basic(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, num_classes))


def mobilenet_v2(num_classes: int = 1000):
    """MobileNetV2 (width 1.0: inverted residuals with depthwise 3x3, ReLU6) as a torch module."""
    from torch import nn

    _, inverted = _blocks()
    layers, cin = [_cbr(3, 32, 3, 2, act="relu6")], 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    return nn.Sequential(*layers, _cbr(cin, 1280, 1, act="relu6"), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(1280, num_classes))


NETS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}


def build_torch(name: str, seed: int = 0):
    """Seeded eval-mode module ``name`` (see ``NETS``) with randomized BatchNorm."""
    import torch

    if name not in NETS:
        raise KeyError(f"Unknown vision model {name!r}; known: {sorted(NETS)}")
    torch.manual_seed(seed)
    net = NETS[name]()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.2, 1.0)
            torch.nn.init.uniform_(m.running_mean, -0.1, 0.1)
            torch.nn.init.uniform_(m.running_var, 0.5, 2.0)
    return net.eval()


def build(name: str, size: int = 224, batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """``build_torch(name)`` exported to ONNX: input ``x`` [batch, 3, size, size], output ``y``."""
    import torch

    net = build_torch(name, seed)
    return zoo.export(net, (torch.randn(batch, 3, size, size),), ["x"], ["y"])
