"""Training, fine-tuning and evaluation."""
from __future__ import annotations

import math
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["fit", "evaluate"]


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr)


def fit(model: nn.Module, train: Dataset, *, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
        weight_decay: float = 1e-4, seed: int = 0, label_smoothing: float = 0.0, warmup_epochs: float = 0.5,
        progress: bool | None = None) -> list[float]:
    """Train with AdamW and a cosine schedule with linear warm-up; returns the mean loss per
    epoch. Seeded: the same seed and data give the same weights."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * len(loader))
    warm = int(warmup_epochs * len(loader))

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    show = sys.stderr.isatty() if progress is None else progress
    losses = []
    model.train()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for xb, yb in _progress(loader, f"epoch {epoch + 1}/{epochs}", show):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(yb)
            n += len(yb)
        losses.append(total / max(1, n))
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 256, num_classes: int | None = None) -> dict:
    """Top-1 accuracy, macro-F1 and the confusion matrix (rows: true class)."""
    was = model.training
    model.eval()
    preds, labels = [], []
    for xb, yb in DataLoader(data, batch_size=batch_size):
        preds.append(model(xb).argmax(1))
        labels.append(yb)
    model.train(was)
    p, y = torch.cat(preds), torch.cat(labels)
    k = num_classes or int(max(p.max(), y.max())) + 1
    cm = torch.zeros(k, k, dtype=torch.int64)
    cm.index_put_((y, p), torch.ones_like(y), accumulate=True)
    tp = cm.diag().double()
    prec = tp / cm.sum(0).double().clamp_min(1)
    rec = tp / cm.sum(1).double().clamp_min(1)
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec), torch.zeros_like(prec))
    present = cm.sum(1) > 0
    return {"top1": float(tp.sum() / cm.sum()), "macro_f1": float(f1[present].mean()), "confusion": cm.tolist()}
