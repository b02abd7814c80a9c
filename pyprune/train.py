"""Training, fine-tuning and evaluation.

`fit` trains with SGD or AdamW under a cosine schedule with linear warm-up, optional label
smoothing and mixed precision on CUDA. Every epoch is seeded from (seed, epoch): the data
order and dropout do not depend on what ran before, so resuming from a checkpoint gives
the same final weights as an uninterrupted run. With ``checkpoint=`` the full training
state is written atomically after every epoch and picked up again by the next call.

Distributed: run the same command under ``torchrun --nproc_per_node N`` (or several nodes).
`init_distributed` sets up the process group (NCCL on CUDA, gloo on CPU), `fit` wraps the
model in DistributedDataParallel with a DistributedSampler, and only rank 0 writes files.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler

__all__ = ["fit", "evaluate", "init_distributed", "is_main_process", "TrainState"]


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Idempotent."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr)


class TrainState(dict):
    """What a training checkpoint holds besides the model (kept as plain data)."""


def _lr_lambda(steps: int, warm: int):
    def f(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def check_fit_options(*, epochs=10, lr=1e-3, optimizer="adamw", teacher=None, distill_temperature=4.0,
                      distill_weight=0.5) -> None:
    """Refuse what :func:`fit` refuses in these options (flows that train twice check the
    second run's before the first)."""
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if teacher is not None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher: expected an nn.Module, got {type(teacher).__name__}")
        for name, v in (("distill_temperature", distill_temperature), ("distill_weight", distill_weight)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not distill_temperature > 0 or not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_temperature must be > 0 and distill_weight in [0, 1], got "
                             f"{distill_temperature!r} and {distill_weight!r}")


def fit(model: nn.Module, train: Dataset, *, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
        optimizer: str = "adamw", momentum: float = 0.9, weight_decay: float = 1e-4, seed: int = 0,
        label_smoothing: float = 0.0, warmup_epochs: float = 0.5, val: Dataset | None = None,
        checkpoint: str | os.PathLike | None = None, resume: bool = True, arch: str | None = None,
        arch_kwargs: dict | None = None, meta: dict | None = None, amp: bool | None = None,
        device: str | torch.device | None = None, num_workers: int = 0, max_steps: int | None = None,
        progress: bool | None = None, log=None, teacher: nn.Module | None = None, distill_temperature: float = 4.0,
        distill_weight: float = 0.5, before_step=None, after_step=None, resume_key: dict | None = None) -> list[dict]:
    """Train `model` in place; returns the history (one dict per epoch: loss, lr, and the
    validation metrics when `val` is given). The model is left in eval mode (ready to
    evaluate, prune or export; the teacher keeps its own mode). A loss that becomes NaN or
    Inf stops training with FloatingPointError before its step, so the model keeps the
    weights of the last finite one.

    teacher: distil from this model (the unpruned one): the loss is
        ``(1 - w) * CE + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` with
        ``T = distill_temperature`` and ``w = distill_weight`` (Hinton et al., 2015); the
        teacher runs in eval mode without gradients, on every rank under DDP.
    before_step: ``before_step(model)`` runs after every backward pass, before the optimizer
        step (no gradients recorded), and may change the gradients, e.g. to give clustered
        filters their cluster's mean gradient (:func:`pyprune.centripetal.centripetal`). Under
        AMP it sees the scaled gradients.
    after_step: ``after_step(model)`` runs after every optimizer step (no gradients), e.g.
        to pull clustered filters together.

    checkpoint: a file for the full training state, written after every epoch; if it
        exists and ``resume`` is true, training continues after its last epoch. With
        ``resume_key`` (what makes two runs the same: inputs and settings) a state saved
        under another key is not resumed from: training starts afresh and says so.
    max_steps: stop after this many optimizer steps in total (for smoke tests).
    """
    check_fit_options(epochs=epochs, lr=lr, optimizer=optimizer, teacher=teacher,
                      distill_temperature=distill_temperature, distill_weight=distill_weight)
    epochs = int(epochs)
    _check_data(train, "fit: train")
    teacher_mode = teacher.training if teacher is not None else None
    distributed = dist.is_available() and dist.is_initialized()
    device = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if distributed else model
    if distributed:
        sampler = DistributedSampler(train, shuffle=True, seed=seed)
    else:
        g = torch.Generator()
        sampler = RandomSampler(train, generator=g)
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
           if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, int(warmup_epochs * len(loader))))
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history: list[dict] = []
    start = 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        from .checkpoint import read

        try:
            obj = read(checkpoint)
        except Exception as e:
            raise ValueError(f"{checkpoint}, the training state this run would resume from, cannot be read ({e}): "
                             "delete it to train afresh") from e
        state = obj.get("train")
        if not isinstance(state, dict):
            raise ValueError(f"{checkpoint} holds no training state to resume from: delete it to train afresh")
    else:
        state = None
    if state is not None and resume_key is not None and state.get("key") != resume_key:
        if is_main_process() and progress is not False:
            print(f"{checkpoint} holds the training state of another run (other inputs or settings): "
                  "starting afresh", file=sys.stderr)
        state = None
    if state is not None:
        model.load_state_dict(obj["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start = int(state["epoch"]) + 1
        if is_main_process() and progress is not False:
            print(f"resuming from {checkpoint}: " + (
                f"epochs 1-{start} are done, continuing with epoch {start + 1} of {epochs}" if start < epochs else
                f"it holds this run's {start} epochs, finished: its weights are the result (delete it to train "
                "again)"), file=sys.stderr)
    show = (sys.stderr.isatty() if progress is None else progress) and is_main_process()
    lines = progress is not False and log is None and is_main_process()  # plain per-epoch lines
    done_steps = start * len(loader)
    t_start = time.perf_counter()
    for epoch in range(start, epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        if distributed:
            sampler.set_epoch(epoch)
        else:
            g.manual_seed(seed * 1_000_003 + epoch)
        net.train()
        total, n = 0.0, 0
        complete = True
        for xb, yb in _progress(loader, f"epoch {epoch + 1}/{epochs}", show):
            if max_steps is not None and done_steps >= max_steps:
                complete = False
                break
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(xb)
                loss = loss_fn(logits, yb)
                if teacher is not None:
                    with torch.no_grad():
                        soft = torch.log_softmax(teacher(xb).float() / distill_temperature, 1)
                    kl = nn.functional.kl_div(torch.log_softmax(logits.float() / distill_temperature, 1), soft,
                                              reduction="batchmean", log_target=True)
                    loss = (1 - distill_weight) * loss + distill_weight * distill_temperature ** 2 * kl
            if scaler is None and not _finite_everywhere(loss, distributed):  # before the step (under AMP the
                if teacher is not None:                                        # scaler skips such steps)
                    teacher.train(teacher_mode)
                raise FloatingPointError(
                    f"fit: the loss became non-finite (here {float(loss.detach())}) at epoch {epoch + 1}, step "
                    f"{done_steps + 1}: "
                    f"training diverged or the data holds NaN/Inf (lr={opt.param_groups[0]['lr']:g}; try a lower lr "
                    "or check the inputs). The model holds the weights of the last finite step")
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if before_step is not None:
                with torch.no_grad():
                    before_step(model)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(model)
            done_steps += 1
            total += float(loss.detach()) * len(yb)
            n += len(yb)
        row = {"epoch": epoch, "loss": total / max(1, n), "lr": opt.param_groups[0]["lr"]}
        if val is not None:
            m = evaluate(model, val, device=device)
            row.update({"val_top1": m["top1"], "val_macro_f1": m["macro_f1"]})
        row["seconds"] = time.perf_counter() - t_start - sum(r.get("seconds", 0.0) for r in history[start:])
        history.append(row)
        if log is not None and is_main_process():
            log(row)
        if lines:
            done = epoch + 1 - start
            eta = (time.perf_counter() - t_start) / done * (epochs - epoch - 1)
            acc = f", val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
            print(f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}{acc}, {row['seconds']:.1f} s, "
                  f"ETA {eta:.0f} s", file=sys.stderr, flush=True)
        if checkpoint is not None and complete:  # only whole epochs are checkpointed
            if is_main_process():
                from .checkpoint import save_model

                save_model(checkpoint, model, arch=arch, arch_kwargs=arch_kwargs, meta=meta,
                           extra={"train": {"key": resume_key, "epoch": epoch, "optimizer": opt.state_dict(),
                                            "scheduler": sched.state_dict(), "history": history}})
            if distributed:
                dist.barrier()
        if max_steps is not None and done_steps >= max_steps:
            break
    model.eval()  # trained: ready to evaluate, prune or export
    if teacher is not None:
        teacher.train(teacher_mode)  # as the caller had it
    return history


def ranks_agree(model: nn.Module) -> bool:
    """True when every rank holds the same parameters (always true without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    flat = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], t) for t in gathered[1:])


def _finite_everywhere(loss: torch.Tensor, distributed: bool) -> bool:
    """Whether the loss is finite on this process and, under DDP, on every other (all stop
    together: one rank stopping alone would leave the others waiting in the allreduce)."""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def _check_data(data, what: str) -> None:
    """A data set of (input tensor, int class label) items, as fit and evaluate batch them."""
    if isinstance(data, DataLoader):
        raise TypeError(f"{what}: expected a Dataset of (input, label) items, got a DataLoader: pass its .dataset "
                        "(batch_size= sets the batches)")
    if isinstance(data, IterableDataset):
        return  # (no item can be read without using up the stream)
    if len(data) == 0:
        raise ValueError(f"{what}: the data set is empty")
    item = data[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        got = f"a {type(item).__name__}" + (f" of {len(item)}" if isinstance(item, (tuple, list, dict)) else "")
        raise ValueError(f"{what}: each item must be an (input, class label) pair, got {got}")
    if not isinstance(item[0], (torch.Tensor, np.ndarray)):
        raise ValueError(f"{what}: an item's input is a {type(item[0]).__name__}, not a tensor or an array")
    label = torch.as_tensor(item[1])
    if label.is_floating_point() or label.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be int class indices, got {label.dtype}")


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 256, num_classes: int | None = None,
             device: str | torch.device | None = None) -> dict:
    """Top-1 accuracy, macro-F1 and the confusion matrix (rows: true class). Macro-F1 is
    the mean F1 over the classes that are a true label or a prediction (scikit-learn's
    ``f1_score(average="macro")``): a class predicted but never true counts, with F1 0.
    Labels must be ints in [0, num_classes); a non-finite output is refused (its argmax
    would be class 0). The model's train/eval mode is restored, also on an error."""
    _check_data(data, "evaluate: data")
    was = model.training
    model.eval()
    p0 = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else p0.device if p0 is not None else torch.device("cpu")
    preds, labels = [], []
    try:
        for xb, yb in DataLoader(data, batch_size=batch_size):
            out = model(xb.to(dev))
            if not torch.isfinite(out).all():
                raise ValueError(f"evaluate: {type(model).__name__} returned non-finite outputs (NaN or Inf) on "
                                 f"batch {len(preds)}: its accuracy would be that of always predicting class 0. "
                                 "Check the weights (a diverged fine-tune?) and the inputs")
            preds.append(out.argmax(1).cpu())
            labels.append(torch.as_tensor(yb))
    finally:
        model.train(was)
    if not preds:
        raise ValueError("evaluate: the data set is empty")
    p, y = torch.cat(preds), torch.cat(labels)
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(f"evaluate: labels must be a 1-D int tensor of class indices, got {y.dtype} of shape "
                         f"{tuple(y.shape)}")
    k = num_classes or int(max(p.max(), y.max())) + 1
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"evaluate: labels must lie in [0, {k}) (num_classes={num_classes}); got labels from "
                         f"{int(y.min())} to {int(y.max())}")
    if int(p.max()) >= k:
        raise ValueError(f"evaluate: the model predicts class {int(p.max())}, but num_classes={k}: it classifies "
                         "more classes than the data has")
    cm = torch.zeros(k, k, dtype=torch.int64)
    cm.index_put_((y.long(), p), torch.ones_like(y, dtype=torch.int64), accumulate=True)
    tp = cm.diag().double()
    prec = tp / cm.sum(0).double().clamp_min(1)
    rec = tp / cm.sum(1).double().clamp_min(1)
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec), torch.zeros_like(prec))
    present = (cm.sum(1) > 0) | (cm.sum(0) > 0)  # a true label or a prediction
    return {"top1": float(tp.sum() / cm.sum()), "macro_f1": float(f1[present].mean()), "confusion": cm.tolist()}
