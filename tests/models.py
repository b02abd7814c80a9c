"""Small user-style models the tests prune (besides torchvision's)."""
from __future__ import annotations

import torch
from torch import nn


def sequential_cnn(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, num_classes),
    )


class ConvHolder(nn.Module):
    """A custom module that owns a conv and a per-channel scale parameter."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, cout, 1, 1) * 0.5)

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.scale


class CustomModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ConvHolder(3, 24)
        self.b = ConvHolder(24, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        y = self.a(x)
        y = y + self.b(y)  # residual through the custom block
        return self.head(y.mean(dim=(2, 3)))


class TwoInputs(nn.Module):
    """Image branch + side-feature branch, fused by concatenation."""

    def __init__(self):
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.side = nn.Sequential(nn.Linear(7, 40), nn.ReLU(), nn.Linear(40, 16), nn.ReLU())
        self.head = nn.Linear(48 + 16, 3)

    def forward(self, image, features):
        return self.head(torch.cat([self.img(image), self.side(features)], dim=1))


class ChannelRoll(nn.Module):
    """Uses an op pyprune cannot follow: rolling the flattened tensor (its channels shift
    into each other's positions)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.roll(self.c1(x), shifts=1))


class SplitStem(nn.Module):
    """A stem of two convolutions (12 and 4 filters) concatenated into a residual stream
    (timm's CSATv2 DCT stem, GhostNet-style concatenations): one group of 16 channels whose
    second piece only `part` writes."""

    def __init__(self):
        super().__init__()
        self.main = nn.Conv2d(3, 12, 3, padding=1)
        self.part = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.cat([self.main(x), self.part(x)], dim=1)
        x = x + self.body(torch.relu(x))
        return self.head(x.mean(dim=(2, 3)))


class SpatialGate(nn.Module):
    """One-channel maps broadcast over every channel: a spatial attention gate (a 1-filter
    conv, a position conv on that one channel in token layout ((B, N, 1) -> (B, 1, H, W),
    as timm's CSATv2 does), sigmoid, product with every channel) beside a CBAM-style one
    from the channel mean."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.squeeze = nn.Conv2d(16, 1, 1)
        self.pos = nn.Conv2d(1, 1, 3, padding=1)
        self.gate = nn.Conv2d(1, 1, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        b, _, h, w = x.shape
        t = self.squeeze(x).flatten(2).transpose(1, 2)  # (B, N, 1)
        m = t.transpose(1, 2).view(b, 1, h, w)
        m = self.pos(m) + m
        x = x * torch.sigmoid(m) * torch.sigmoid(self.gate(x.mean(dim=1, keepdim=True)))
        return self.head(torch.relu(self.c2(x)).mean(dim=(2, 3)))


class TinyUNet(nn.Module):
    """An encoder-decoder: a strided conv down, a transposed conv up (weight (in, out, k, k)),
    concatenated with the skip connection; the user-style model with ConvTranspose2d."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Conv2d(32, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        a = torch.relu(self.enc(x))
        u = torch.relu(self.up(torch.relu(self.down(a))))
        y = torch.relu(self.dec(torch.cat([u, a], 1)))
        return self.head(y.mean(dim=(2, 3)))


class GatedConvNet(nn.Module):
    """MambaOut's gated CNN block on a channels-last map: fc1's output split into (g, i, c)
    by sizes the module holds (`split_indices`), c through a depthwise conv, gelu(g) times
    cat(i, c): g's channel j is coupled with channel j of cat(i, c), across the pieces."""

    def __init__(self, hidden: int = 12, conv: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 2 * hidden)
        self.split_indices = (hidden, hidden - conv, conv)
        self.conv = nn.Conv2d(conv, conv, 3, padding=1, groups=conv)
        self.fc2 = nn.Linear(hidden, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        g, i, c = torch.split(self.fc1(x), self.split_indices, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.fc2(nn.functional.gelu(g) * torch.cat((i, c), dim=-1))
        return self.head(x.mean(dim=(1, 2)))


class SubPixelNet(nn.Module):
    """Sub-pixel convolution (ESPCN, super-resolution heads): a conv writes 4 channels per
    output channel, pixel_shuffle(2) folds each run of 4 into one channel at twice the
    resolution; pixel_unshuffle(2) on the way in spreads each input channel over 4."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(12, 16, 3, padding=1)  # reads pixel_unshuffle(x, 2): 3 x 4 channels
        self.expand = nn.Conv2d(16, 8 * 4, 3, padding=1)
        self.refine = nn.Conv2d(8, 16, 3, padding=1)
        self.squeeze = nn.Conv2d(16 * 4, 8, 1)  # reads pixel_unshuffle(refine, 2)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.stem(nn.functional.pixel_unshuffle(x, 2)))
        h = torch.relu(self.refine(nn.functional.pixel_shuffle(self.expand(h), 2)))
        h = torch.relu(self.squeeze(nn.functional.pixel_unshuffle(h, 2)))
        return self.head(h.mean(dim=(2, 3)))
