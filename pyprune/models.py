"""Model builders."""
from __future__ import annotations

from torch import nn

__all__ = ["digits_cnn"]


def digits_cnn(num_classes: int = 10, width: int = 32, batchnorm: bool = True) -> nn.Sequential:
    """A small VGG-style CNN for 8x8 single-channel images (the embedded digits).
    ``batchnorm=False`` gives the plain conv -> ReLU variant (where filter magnitudes
    matter directly and weight merging is exact for positively scaled filters)."""
    w = width
    if not batchnorm:
        return nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * w * 2 * 2, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes),
        )
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * w * 2 * 2, 128), nn.ReLU(inplace=True), nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )
