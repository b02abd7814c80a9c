"""Data sets: CIFAR-10/100 and ImageFolder from local folders, and the embedded digits.

No data set is ever downloaded: CIFAR is read through torchvision from ``data_dir`` with
``download=False`` (a missing folder gives a message saying how to get it), ImageFolder
reads a user's own class folders, and ``digits`` is scikit-learn's handwritten digits (1797
real 8x8 images, 10 classes), which ship with the package.
"""
from __future__ import annotations

import pathlib
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["digits", "cifar", "image_folder", "get_dataset", "iter_batches", "DataSpec", "DataError"]


class DataError(ValueError):
    """A data set cannot be loaded; the message says what to do."""


@dataclass
class DataSpec:
    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    size: int
    name: str
    classes: list | None = None  # class names where the data names them (imagefolder: its folders)


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        held.extend(idx[: max(1, int(round(fraction * len(idx))))] if len(idx) > 1 else [])
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


class _Augmented(Dataset):
    """Random shifts (and optional flips) on a tensor data set, seeded per item."""

    def __init__(self, base: TensorDataset, pad: int, flip: bool):
        self.base, self.pad, self.flip = base, pad, flip

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        if self.pad:
            p = self.pad
            xp = torch.nn.functional.pad(x[None], (p, p, p, p))[0]
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = xp[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x, y


def digits(size: int = 8, test_fraction: float = 0.2, seed: int = 0, channels: int = 1,
           augment: bool = False) -> tuple[Dataset, Dataset]:
    """Train and test splits of the digits as (N, channels, size, size) floats in [0, 1] and
    int64 labels; stratified, seeded split. ``size`` > 8 upsamples bilinearly, ``channels``
    repeats the gray channel (for RGB models). ``augment`` adds random 1-pixel shifts (no
    flips: digits are not mirror-symmetric)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if channels != 1:
        x = x.repeat(1, channels, 1, 1)
    tr, te = _stratified_split(d.target, test_fraction, seed)
    train = TensorDataset(x[tr], y[tr])
    test = TensorDataset(x[te], y[te])
    return (_Augmented(train, max(1, size // 8), False) if augment else train), test


_CIFAR_HELP = (
    "CIFAR-{n} was not found in {d}. pyprune never downloads data: get the python version "
    "(cifar-{n}-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html) and extract it "
    "into {d} so that {d}/{folder} exists, then pass --data-dir {d}."
)


def cifar(data_dir: str | pathlib.Path, num_classes: int = 10, augment: bool = True) -> tuple[Dataset, Dataset]:
    """CIFAR-10 or CIFAR-100 (train, test) from a local folder, via torchvision."""
    import torchvision
    from torchvision import transforms as T

    if num_classes not in (10, 100):
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    d = pathlib.Path(data_dir)
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    if not (d / folder).is_dir():
        raise DataError(_CIFAR_HELP.format(n=num_classes, d=d, folder=folder))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    test_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]) if augment else test_tf
    cls = _local_cifar(torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100)
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in files if not (d / folder / f).is_file()]
    if missing:
        raise DataError(f"{d / folder} lacks {', '.join(missing)} of CIFAR-{num_classes}: extract the whole "
                        f"archive there (pyprune never downloads)")
    try:
        return cls(str(d), train=True, transform=train_tf, download=False), cls(str(d), train=False, transform=test_tf, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(_CIFAR_HELP.format(n=num_classes, d=d, folder=folder) + f" ({e})") from e
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as e:  # a damaged batch file
        bad = next((f for f in files if not _readable_pickle(d / folder / f)), None)
        raise DataError(f"CIFAR-{num_classes} in {d / folder} could not be read ({type(e).__name__}: {e}): "
                        + (f"{bad} is damaged" if bad else "a file is damaged") + "; extract the archive again") from e


def _readable_pickle(path: pathlib.Path) -> bool:
    """`path` unpickles to a dict (what each CIFAR batch and meta file holds)."""
    try:
        with open(path, "rb") as f:
            return isinstance(pickle.load(f, encoding="latin1"), dict)
    except Exception:  # noqa: BLE001 - any failure is a damaged file
        return False


def _load_image(path: str):
    """An image as RGB (torchvision's default loader), a file PIL cannot read named."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}); remove or replace it") from e


def _local_cifar(base):
    """torchvision's CIFAR reader without the md5 checks of the official archive: pyprune
    never downloads, so files that are present and readable are what counts (the pickles
    are still parsed by torchvision's own code)."""
    import os
    import pickle

    class LocalCIFAR(base):
        def _check_integrity(self) -> bool:
            folder = os.path.join(self.root, self.base_folder)
            return all(os.path.isfile(os.path.join(folder, f)) for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            if not os.path.isfile(path):
                raise RuntimeError(f"CIFAR metadata file {path} not found")
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    LocalCIFAR.__name__ = base.__name__
    return LocalCIFAR


def image_folder(root: str | pathlib.Path, size: int = 224, val_fraction: float = 0.2, seed: int = 0,
                 augment: bool = True) -> tuple[Dataset, Dataset, list[str]]:
    """A user's own images, one folder per class (e.g. defect/ and ok/), split into train
    and validation (stratified, seeded). Returns (train, val, class names)."""
    import torchvision
    from torchvision import transforms as T

    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (expected one sub-folder per class)")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    test_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(mean, std)])
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(mean, std)]) if augment else test_tf
    try:
        base_train = torchvision.datasets.ImageFolder(str(root), transform=train_tf, loader=_load_image)
        base_val = torchvision.datasets.ImageFolder(str(root), transform=test_tf, loader=_load_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"cannot read images from {root}: {e}") from e
    if len(base_train.classes) < 2:
        raise DataError(f"{root} has {len(base_train.classes)} class folder(s); at least 2 are needed")
    tr, va = _stratified_split(np.array(base_train.targets), val_fraction, seed)
    return Subset(base_train, tr.tolist()), Subset(base_val, va.tolist()), list(base_train.classes)


def get_dataset(name: str, data_dir: str | None = None, *, size: int | None = None, augment: bool = True,
                seed: int = 0, channels: int | None = None) -> DataSpec:
    """A data set by name: ``digits``, ``cifar10``, ``cifar100`` or ``imagefolder``."""
    if name == "digits":
        s = size or 8
        ch = channels or 1
        tr, te = digits(size=s, seed=seed, channels=ch, augment=augment)
        return DataSpec(tr, te, 10, ch, s, name)
    if name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise DataError(f"{name} needs --data-dir (a local folder; nothing is downloaded)")
        n = 10 if name == "cifar10" else 100
        tr, te = cifar(data_dir, n, augment)
        return DataSpec(tr, te, n, 3, 32, name)
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("imagefolder needs --data-dir (one sub-folder per class)")
        s = size or 224
        tr, va, classes = image_folder(data_dir, s, seed=seed, augment=augment)
        return DataSpec(tr, va, len(classes), 3, s, name, classes)
    raise DataError(f"unknown data set {name!r}; known: digits, cifar10, cifar100, imagefolder")


def check_calibration(calibration, example_inputs: tuple) -> None:
    """Before any work: the first calibration batch holds what the model takes, as the
    example inputs do (as many tensors, the same rank and channel count, finite values).
    A one-pass iterator is not read here (its first batch would be lost)."""
    if calibration is None or iter(calibration) is calibration:
        return
    for inputs, _ in iter_batches(calibration, 1):
        if len(inputs) != len(example_inputs):
            raise ValueError(
                f"calibration: a batch holds {len(inputs)} input tensor(s), but the model takes {len(example_inputs)} "
                "(as the example inputs). A batch is a tensor or an (inputs, labels) pair; for a model with several "
                "inputs give ((input_1, input_2, ...), labels), or ((input_1, input_2, ...), None) without labels")
        for j, (t, ex) in enumerate(zip(inputs, example_inputs)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"calibration: input {j} of a batch is a {type(t).__name__}, not a tensor")
            if isinstance(ex, torch.Tensor) and t.dim() != ex.dim():
                raise ValueError(f"calibration: input {j} of the first batch has shape {tuple(t.shape)}, but the example "
                                 f"input has {tuple(ex.shape)}: calibration batches must be inputs the model takes "
                                 f"(rank {ex.dim()})")
            if isinstance(ex, torch.Tensor) and ex.dim() in (4, 5) and t.shape[1] != ex.shape[1]:  # images, volumes
                raise ValueError(f"calibration: input {j} of the first batch has shape {tuple(t.shape)}, but the example "
                                 f"input has {tuple(ex.shape)}: calibration batches must be inputs the model takes "
                                 f"({ex.shape[1]} channels)")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"calibration: input {j} of the first batch holds NaN or infinite values")


def iter_batches(calibration, limit: int | None = None):
    """Yield (inputs tuple, labels or None) from a DataLoader / iterable of batches. A batch
    is a tensor (inputs only), or a (inputs, labels) pair whose inputs are a tensor or a
    tuple of tensors. ``limit`` stops after that many batches."""
    if calibration is None:
        raise ValueError("this method needs calibration data: pass calibration=<DataLoader or list of batches>")
    n = 0
    for batch in calibration:
        if isinstance(batch, torch.Tensor):
            yield (batch,), None
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = batch
            yield (tuple(x) if isinstance(x, (tuple, list)) else (x,)), y
        else:
            raise ValueError("calibration: each batch must be a tensor or an (inputs, labels) pair")
        n += 1
        if limit is not None and n >= limit:
            return
    if n == 0:
        raise ValueError("calibration: no batches")
