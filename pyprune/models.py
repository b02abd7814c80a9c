"""Model registry: the CIFAR-style networks the pruning literature reports on, a small CNN
for the embedded digits, and every torchvision classification model by name.

    model = pyprune.models.get_model("resnet56", num_classes=10)
    model = pyprune.models.get_model("resnet50", num_classes=2, weights="resnet50-imagenet.pth")

``weights`` is always a local file (no download at run time): a state_dict (or a pyprune
checkpoint) for the model at its original head size; the head is then replaced by a fresh
layer with ``num_classes`` outputs (transfer learning).
"""
from __future__ import annotations

import pathlib
from typing import Callable

import torch
from torch import nn

__all__ = ["get_model", "register_model", "available_models", "digits_cnn", "MODELS"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    """pyprune's and torchvision's model names (timm's are reached as ``timm:<name>``)."""
    import torchvision

    return sorted(set(MODELS) | set(torchvision.models.list_models(module=torchvision.models)))


def get_model(name: str, num_classes: int = 10, *, weights: str | pathlib.Path | None = None,
              in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a model with `num_classes` outputs and `in_channels` input channels: a name of
    pyprune's registry, a torchvision model name, or ``timm:<name>`` (timm installed; random
    weights). `weights` is a local file (state_dict, pyprune checkpoint or .safetensors)
    loaded before the head is replaced; a torchvision/timm model's first conv is adapted
    to `in_channels` (its RGB filters averaged when weights were loaded)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ValueError(f"{name}: timm is not installed (pip install timm)") from None
        tname = name[5:]
        if tname not in timm.list_models():
            raise ValueError(f"unknown timm model {tname!r} (timm.list_models() lists them)")
        if weights is None:
            return timm.create_model(tname, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
        model = timm.create_model(tname, pretrained=False, **kwargs)
        _load_local(model, weights)
        return replace_head(adapt_input(model, in_channels), num_classes)
    if name in MODELS:
        if weights is not None:
            model = MODELS[name](num_classes=kwargs.pop("weights_classes", num_classes), in_channels=in_channels, **kwargs)
            _load_local(model, weights)
            return replace_head(adapt_input(model, in_channels), num_classes)
        return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown model {name!r}; known: {', '.join(available_models())}, or timm:<name>")
    if weights is None:
        return adapt_input(torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs),
                           in_channels)
    model = torchvision.models.get_model(name, weights=None, **kwargs)  # the file's head (1000 classes)
    _load_local(model, weights)
    return replace_head(adapt_input(model, in_channels), num_classes)


def adapt_input(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the model's first Conv2d `in_channels` inputs (grayscale digits into an RGB
    network): its filters become the mean over its old input channels, repeated."""
    first = _first_conv(model)
    if first is None or first[1].in_channels == in_channels:
        return model
    name, m = first
    if m.groups != 1:
        raise ValueError(f"{name}: a grouped first conv cannot take {in_channels} input channels")
    new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, 1,
                    m.bias is not None, m.padding_mode)
    with torch.no_grad():
        new.weight.copy_(m.weight.mean(1, keepdim=True).expand_as(new.weight) * (m.in_channels / in_channels))
        if m.bias is not None:
            new.bias.copy_(m.bias)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)
    return model


def _load_local(model: nn.Module, path) -> None:
    """Load the local weights file `path` into `model`, whose head first takes the file's
    classes (the caller replaces it after); any other tensor of another shape is refused,
    named."""
    from .checkpoint import read_state_dict

    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"weights file {path} not found (weights are only loaded from local files)")
    sd = read_state_dict(path)
    head = _head(model)
    if head is not None and isinstance(sd.get(f"{head[0]}.weight"), torch.Tensor):
        replace_head(model, int(sd[f"{head[0]}.weight"].shape[0]))  # the file's classes, for now
    first = _first_conv(model)
    w = sd.get(f"{first[0]}.weight") if first is not None else None
    if isinstance(w, torch.Tensor) and w.dim() == 4:
        adapt_input(model, int(w.shape[1]) * first[1].groups)  # (the file's input channels, for now)
    own = model.state_dict()
    bad = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        shown = "; ".join(f"{k} is {list(sd[k].shape)} in the file, {list(own[k].shape)} in the model" for k in bad[:3])
        raise ValueError(f"{path} does not match the model: {shown}{' ...' if len(bad) > 3 else ''}. (A pruned "
                         "pyprune checkpoint has its own widths: load it with --checkpoint, or "
                         "pyprune.checkpoint.load_model.)")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _first_conv(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv2d (the one that reads the input)."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The classifier head: the last Linear, else (a conv classifier) the last Conv2d."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = (name, m)
    return last


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the last Linear (or, for conv classifiers, the last Conv2d) by a fresh one
    with `num_classes` outputs."""
    last = _head(model)
    if last is None:
        raise ValueError("no Linear or Conv2d layer to use as the classifier head")
    name, m = last
    if (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == num_classes:
        return model  # the head already has these classes (a trained head is kept)
    if isinstance(m, nn.Linear):
        new = nn.Linear(m.in_features, num_classes, bias=m.bias is not None)
    else:
        new = nn.Conv2d(m.in_channels, num_classes, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)
    return model


# -- the embedded digits ------------------------------------------------------------------
@register_model("digits_cnn")
def digits_cnn(num_classes: int = 10, width: int = 32, batchnorm: bool = True, in_channels: int = 1) -> nn.Sequential:
    """A small VGG-style CNN for 8x8 images (the embedded digits). ``batchnorm=False`` gives
    the plain conv -> ReLU variant (where filter magnitudes matter directly and weight
    merging is exact for positively scaled filters)."""
    w = width
    if not batchnorm:
        return nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * w * 2 * 2, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes),
        )
    return nn.Sequential(
        nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * w * 2 * 2, 128), nn.ReLU(inplace=True), nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


# -- CIFAR VGG (BN, 512-unit head) ------------------------------------------------------------
_VGG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs and the 512-unit head used for CIFAR."""

    def __init__(self, depth: int = 16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers, c = [], in_channels
        for v in _VGG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                        nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


for _d in _VGG:
    register_model(f"vgg{_d}_cifar")(lambda num_classes=10, in_channels=3, _d=_d: CifarVGG(_d, num_classes, in_channels))


# -- CIFAR ResNet-20/56/110 (He et al., 2016; projection shortcuts) ---------------------------
class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 56, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for i, w in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(_Basic(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


for _d in (20, 56, 110):
    register_model(f"resnet{_d}_cifar")(lambda num_classes=10, in_channels=3, _d=_d: CifarResNet(_d, num_classes, in_channels))


# -- a small DenseNet-BC for CIFAR (Huang et al., 2017) -----------------------------------------
class _DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class CifarDenseNet(nn.Module):
    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        stages = []
        for i in range(3):
            layers = []
            for _ in range(n):
                layers.append(_DenseLayer(c, growth))
                c += growth
            stages.append(nn.Sequential(*layers))
            if i < 2:
                out = c // 2
                stages.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, out, 1, bias=False), nn.AvgPool2d(2)))
                c = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


register_model("densenet40_cifar")(lambda num_classes=10, in_channels=3: CifarDenseNet(40, 12, num_classes, in_channels))


# -- MobileNetV2 for 32x32 -----------------------------------------------------------------------
@register_model("mobilenet_v2_cifar")
def mobilenet_v2_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 with the stem and the first downsampling at stride 1 (the
    usual adaptation to 32x32 inputs)."""
    import torchvision

    m = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    stem = m.features[0][0]
    m.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    m.features[2].conv[1][0].stride = (1, 1)
    return m
