"""Small torch nets for the quantization tests: convs, a folded BatchNorm, residual adds, a 1x1 attention block."""

from __future__ import annotations

import torch
from torch import nn


class TinyAttention(nn.Module):
    """Global single-head attention over positions with 1x1 q/kv/out projections (the shape HaloAE's block has)."""

    def __init__(self, channels: int):
        super().__init__()
        self.to_q = nn.Conv2d(channels, channels, 1, bias=False)
        self.to_kv = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.to_q(x).flatten(2).transpose(1, 2)
        k, v = self.to_kv(x).flatten(2).chunk(2, dim=1)
        attn = torch.softmax(torch.matmul(q, k) / c**0.5, dim=-1)
        self.last_attention = attn
        out = torch.matmul(attn, v.transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return self.to_out(out)


class TinyNet(nn.Module):
    """conv+BN+ReLU -> residual block (3x3 + 1x1) -> attention -> 1x1 head: 6 convs, 5 units."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 1))
        self.attn = TinyAttention(width)
        self.head = nn.Conv2d(width, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(x + self.body(x))
        x = x + self.attn(x)
        return self.head(x)


def make_tiny_net(seed: int = 0, width: int = 8) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(width)
    with torch.no_grad():  # non-trivial BN statistics so folding is actually exercised
        net.stem_bn.running_mean.uniform_(-0.5, 0.5)
        net.stem_bn.running_var.uniform_(0.5, 2.0)
        net.stem_bn.weight.uniform_(0.5, 1.5)
        net.stem_bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


class ResidualBlock(nn.Module):
    """1x1 expand -> ReLU -> 1x1 project, plus the input (MBConv's shape without the depthwise conv)."""

    def __init__(self, width: int):
        super().__init__()
        self.expand = nn.Conv2d(width, 2 * width, 1)
        self.project = nn.Conv2d(2 * width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(torch.relu(self.expand(x)))


class ResidualChain(nn.Module):
    """stem conv -> 3 residual blocks -> 1x1 head; block 1's output is also pooled into the output (a side reader,
    like the location head reading a backbone stage)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(3)))
        self.head = nn.Conv2d(width, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x1 = self.blocks[0](x)
        x2 = self.blocks[1](x1)
        side = torch.nn.functional.avg_pool2d(x2, 2).mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        return self.head(self.blocks[2](x2)) + side


def make_residual_chain(seed: int = 0, width: int = 8) -> ResidualChain:
    torch.manual_seed(seed)
    return ResidualChain(width).eval()
