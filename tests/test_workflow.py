"""The workflow: models, data, training (resume, DDP), checkpoints and the CLI."""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parent.parent

import pyprune
from pyprune.checkpoint import CheckpointError, load_model, save_model
from pyprune.data import DataError, cifar, digits, get_dataset, image_folder
from pyprune.models import get_model, replace_head
from pyprune.train import evaluate, fit


# -- data -------------------------------------------------------------------------------------
def write_cifar10(root, n_per_batch=6, seed=0):
    """A CIFAR-10 folder in the real layout: pickled dicts with uint8 'data' (N x 3072,
    channel-major) and 'labels', plus batches.meta with the class names."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n_per_batch}, f)
    return batches


def test_cifar_folder_loads_through_the_real_reader(tmp_path):
    batches = write_cifar10(tmp_path)
    train, test = cifar(tmp_path, 10, augment=False)
    assert len(train) == 30 and len(test) == 6
    assert train.classes[3] == "cat"
    x, y = test[2]
    data, labels = batches["test_batch"]
    assert y == labels[2]
    img = torch.from_numpy(data[2].reshape(3, 32, 32).astype(np.float32) / 255)
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
    torch.testing.assert_close(x, (img - mean) / std)
    spec = get_dataset("cifar10", str(tmp_path), augment=True)
    assert spec.num_classes == 10 and spec.train[0][0].shape == (3, 32, 32)


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"never downloads.*cifar-10-python.tar.gz"):
        cifar(tmp_path, 10)
    with pytest.raises(DataError, match="needs --data-dir"):
        get_dataset("cifar100")


def test_image_folder_of_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("defect", "ok"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    train, val, classes = image_folder(tmp_path, size=16, val_fraction=0.34, augment=True)
    assert classes == ["defect", "ok"]
    assert len(train) + len(val) == 12 and len(val) == 4
    assert sorted(val[i][1] for i in range(len(val))) == [0, 0, 1, 1]  # stratified
    assert train[0][0].shape == (3, 16, 16)


def test_cli_checkpoints_carry_their_split_classes_and_input(tmp_path, cli):
    """A checkpoint records the seed of its held-out split and (image folders) its class
    names: evaluate without --seed scores the split it was trained beside, a folder of other
    classes is refused, the same prune twice gives the same file (its calibration batches
    are augmented the same way), a changed image folder is another training run (not resumed
    from), and a checkpoint saved without its input shape still prunes, evaluates and exports."""
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "imgs"
    for cls in ("defect", "ok"):
        (data / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    run = ("--dataset", "imagefolder", "--data-dir", str(data), "--size", "8", "--model", "digits_cnn", "--quiet")
    t = cli("train", *run, "--epochs", "1", "--seed", "3", "--out", str(tmp_path / "t"))
    assert t.returncode == 0, t.stderr[-2000:]
    meta = load_model(tmp_path / "t" / "model.pt")[1]
    assert meta["split_seed"] == 3 and meta["classes"] == ["defect", "ok"]
    assert meta["data_dir"] == os.path.realpath(data)
    e = cli("evaluate", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--out", str(tmp_path / "e.json"))
    assert e.returncode == 0, e.stderr[-2000:]  # (the folder the checkpoint records, said in a note)
    assert f"note: data from {os.path.realpath(data)}, the folder the checkpoint records" in e.stderr
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == meta["top1"]
    other = tmp_path / "other"
    for cls in ("cat", "dog"):
        (other / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(other / cls / f"{i}.png")
    e = cli("evaluate", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--data-dir", str(other))
    assert e.returncode != 0 and "trained on the classes defect, ok, the data in" in e.stderr and "cat, dog" in e.stderr
    outs = []
    for k in range(2):
        p = cli("prune", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--data-dir", str(data), "--method", "l1",
                "--out", str(tmp_path / f"p{k}.pt"))
        assert p.returncode == 0, p.stderr[-2000:]
        outs.append(load_model(tmp_path / f"p{k}.pt")[0].state_dict())
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    for seed in ((), ("--seed", "3")):  # one seed throughout: the checkpoint's, for the split and the criterion
        p = cli("prune", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--data-dir", str(data), "--method",
                "random", *seed, "--out", str(tmp_path / f"r{len(seed)}.pt"))
        assert p.returncode == 0, p.stderr[-2000:]
    r0, r2 = (load_model(tmp_path / f"r{k}.pt")[0].state_dict() for k in (0, 2))
    assert all(torch.equal(r0[k], r2[k]) for k in r0)
    from pyprune.cli._commands import _folder_digest

    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "ok").symlink_to(data / "ok")  # a class folder linked in (ImageFolder follows it)
    digest = _folder_digest(str(tmp_path / "linked"))
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(data / "ok" / "new.png")
    assert _folder_digest(str(tmp_path / "linked")) != digest
    t = cli("train", *run[:-1], "--epochs", "1", "--seed", "3", "--out", str(tmp_path / "t"), "--force")  # (not quiet)
    assert t.returncode == 0 and "holds the training state of another run" in t.stderr, t.stderr[-2000:]
    moved = tmp_path / "moved"
    data.rename(moved)  # a recorded folder that is gone: --data-dir is asked for, as before
    e = cli("evaluate", "--checkpoint", str(tmp_path / "t" / "model.pt"))
    assert e.returncode == 2 and "imagefolder needs --data-dir" in e.stderr
    moved.rename(data)
    bare = tmp_path / "bare.pt"
    pyprune.checkpoint.save_model(bare, load_model(tmp_path / "t" / "model.pt")[0], arch="digits_cnn",
                                  arch_kwargs={"num_classes": 2, "in_channels": 3})
    for args in (("prune", "--checkpoint", str(bare), "--dataset", "digits", "--method", "l1", "--out",
                  str(tmp_path / "bp.pt")),
                 ("export", "--checkpoint", str(bare), "--size", "8", "--out", str(tmp_path / "b.onnx"))):
        p = cli(*args)  # (the side: the data set's, else --size, else 224)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "the checkpoint records no input channels or size: taking 3x8x8" in p.stderr
    assert "split_seed" not in load_model(tmp_path / "bp.pt")[1]  # not known: not recorded as if it were
    i = cli("info", str(tmp_path / "missing.pt"))
    assert i.returncode == 2 and f"{tmp_path / 'missing.pt'} does not exist" in i.stderr
    i = cli("info", str(tmp_path / "p0.pt"))  # a checkpoint where a model name could stand: its own widths
    assert i.returncode == 0 and "MACs at 3x8x8" in i.stdout, i.stderr[-2000:]
    pruned = load_model(tmp_path / "p0.pt")[0]
    assert f"p0.pt: {sum(q.numel() for q in pruned.parameters()):,} parameters" in i.stdout


def test_digits_splits_are_real_and_stratified():
    train, test = digits()
    assert len(train) + len(test) == 1797
    labels = torch.stack([test[i][1] for i in range(len(test))])
    assert torch.bincount(labels).min() >= 30
    big, _ = digits(size=32, channels=3)
    assert big[0][0].shape == (3, 32, 32)


# -- models -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vgg11_cifar", "vgg16_cifar", "resnet20_cifar", "resnet56_cifar", "resnet110_cifar",
                                  "densenet40_cifar", "mobilenet_v2_cifar"])
def test_cifar_models_run_and_prune(name):
    model = get_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    res = pyprune.prune(model, x[:1], method="l2", ratio=0.5)
    assert res.model(x).shape == (2, 10)
    assert res.summary.params_after < 0.6 * res.summary.params_before


def test_local_weights_and_head_replacement(tmp_path):
    src = get_model("resnet18", num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    model = get_model("resnet18", num_classes=2, weights=path)
    assert model.fc.out_features == 2
    torch.testing.assert_close(model.conv1.weight, src.conv1.weight)
    sq = replace_head(get_model("squeezenet1_1", num_classes=1000), 3)
    assert sq.classifier[1].out_channels == 3
    with pytest.raises(FileNotFoundError, match="local files"):
        get_model("resnet18", num_classes=2, weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown model"):
        get_model("resnet9000")


def test_local_weights_with_a_head_of_other_classes(tmp_path, cli):
    """A weights file whose head has other classes than the model's default (7, not 1000;
    3, not 10) loads: its head is kept where it has the classes asked, replaced where not;
    a registry model's first conv takes the file's input channels, then the ones asked.
    A body tensor of another shape (a pruned checkpoint given as weights) is refused, named."""
    from pyprune.models import digits_cnn

    src = torchvision.models.resnet18(num_classes=7)
    torch.save(src.state_dict(), tmp_path / "r18_7.pth")
    kept = get_model("resnet18", num_classes=7, weights=tmp_path / "r18_7.pth")
    torch.testing.assert_close(kept.fc.weight, src.fc.weight)  # the trained head, kept
    assert get_model("resnet18", num_classes=5, weights=tmp_path / "r18_7.pth").fc.out_features == 5
    gray = digits_cnn(num_classes=3)
    torch.save(gray.state_dict(), tmp_path / "d3.pt")
    rgb = get_model("digits_cnn", num_classes=10, in_channels=3, weights=tmp_path / "d3.pt")
    assert rgb[0].in_channels == 3 and list(rgb.children())[-1].out_features == 10
    torch.testing.assert_close(rgb[0].weight, gray[0].weight.expand_as(rgb[0].weight) / 3)
    p = cli("prune", "--model", "resnet18", "--weights", str(tmp_path / "r18_7.pth"), "--num-classes", "7", "--size",
            "32", "--method", "l1", "--out", str(tmp_path / "p.pt"))
    assert p.returncode == 0, p.stderr[-2000:]
    res = pyprune.prune(gray, torch.randn(1, 1, 8, 8), method="l1", ratio=0.5)
    pyprune.checkpoint.save_model(tmp_path / "pruned.pt", res.model, arch="digits_cnn")
    with pytest.raises(ValueError, match=r"0\.weight is \[16, 1, 3, 3\] in the file, \[32, 1, 3, 3\] in the model.*"
                                         r"load it with --checkpoint"):
        get_model("digits_cnn", num_classes=3, in_channels=1, weights=tmp_path / "pruned.pt")


# -- training ---------------------------------------------------------------------------------
def test_training_on_digits_learns():
    train, test = digits()
    torch.manual_seed(0)
    model = get_model("digits_cnn", num_classes=10, in_channels=1)
    chance = evaluate(model, test)["top1"]
    hist = fit(model, train, epochs=2, lr=3e-3, seed=0)
    m = evaluate(model, test)
    assert m["top1"] > 0.8 > chance + 0.5
    assert hist[1]["loss"] < hist[0]["loss"]
    assert np.array(m["confusion"]).sum() == len(test) and 0 < m["macro_f1"] <= 1


def test_resume_gives_the_same_weights(tmp_path):
    train, _ = digits()
    sub = torch.utils.data.Subset(train, range(400))

    def make():
        torch.manual_seed(0)
        return get_model("digits_cnn", num_classes=10, in_channels=1)

    full = make()
    fit(full, sub, epochs=4, lr=2e-3, seed=3, checkpoint=tmp_path / "a.pt")

    class Stop(Exception):
        pass

    def crash(row):
        if row["epoch"] == 2:
            raise Stop  # killed during epoch 3, before its checkpoint

    first = make()
    with pytest.raises(Stop):
        fit(first, sub, epochs=4, lr=2e-3, seed=3, checkpoint=tmp_path / "b.pt", log=crash)
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["train"]["epoch"] == 1
    resumed = make()  # a fresh process would start from a fresh model
    hist = fit(resumed, sub, epochs=4, lr=2e-3, seed=3, checkpoint=tmp_path / "b.pt")
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "pyprune", "train", "--model", "digits_cnn", "--epochs", "1",
           "--out", str(out), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["ranks_agree"] is True
    assert p.stdout.count("model written to") == 1  # rank 0 only
    assert sorted(f.name for f in out.iterdir()) == ["metrics.json", "model.pt", "train_state.pt"]
    assert torch.load(out / "train_state.pt", weights_only=True)["train"]["epoch"] == 0
    model, meta = load_model(out / "model.pt")
    assert meta["dataset"] == "digits"


# -- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet56_cifar", "densenet40_cifar", "resnet18", "densenet121"])
def test_pruned_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = get_model(arch, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    res = pyprune.prune(model, x[:1], method="l2", ratio=0.5)
    path = save_model(tmp_path / "p.pt", res.model, arch=arch, arch_kwargs={"num_classes": 10},
                      meta={"method": "l2", "ratio": 0.5, "top1": 0.5})
    obj = torch.load(path, weights_only=True)  # plain data only
    assert obj["format"] == "pyprune-checkpoint"
    loaded, meta = load_model(path)
    assert meta == {"method": "l2", "ratio": 0.5, "top1": 0.5}
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))
    assert sum(p.numel() for p in loaded.parameters()) == res.summary.params_after


def test_user_model_checkpoint_needs_the_architecture(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", ratio=0.5)
    path = save_model(tmp_path / "u.pt", res.model)
    with pytest.raises(CheckpointError, match="names no registry architecture"):
        load_model(path)
    loaded, _ = load_model(path, model=model)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), res.model(x))
    assert model[0].out_channels == 8  # the given instance is not modified


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_tied_weights_stay_tied_through_a_checkpoint(tmp_path, suffix):
    """Two layers sharing one weight are cut together and saved; loading resizes the shared
    tensor once, so the loaded model's layers share it again (resized apart, a step on one
    would no longer move the other), and .safetensors, which refuses shared memory, writes it
    once per name."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3)
            self.b.weight = self.a.weight
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            return self.head((torch.relu(self.a(x)) + torch.relu(self.b(x))).mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    res = pyprune.prune(Tied().eval(), x, method="l1", ratio=0.5)
    assert res.model.a.weight is res.model.b.weight and res.model.a.weight.shape == (8, 8, 3, 3)
    path = save_model(tmp_path / f"t{suffix}", res.model, attributes=res.attributes)
    loaded, _ = load_model(path, model=Tied())
    assert loaded.a.weight is loaded.b.weight
    assert torch.equal(loaded(x), res.model(x))
    # a float16 model comes back float16, still tied (load_state_dict alone copies into float32)
    half = save_model(tmp_path / f"h{suffix}", res.model.half(), attributes=res.attributes)
    loaded, _ = load_model(half, model=Tied())
    assert loaded.a.weight is loaded.b.weight and {p.dtype for p in loaded.parameters()} == {torch.float16}
    assert torch.equal(loaded(x.half()), res.model(x.half()))


@pytest.mark.parametrize("steps", [1, 2])
def test_rewritten_split_sizes_are_saved_without_the_attributes(tmp_path, steps):
    """save_model(path, res.model) without ``attributes=``: the split sizes pruning rewrote
    are saved all the same (the pruned model lists which attributes it rewrote; their
    values are read when saving, every round of an iterative prune included). Before, the
    load succeeded and the first call failed in split_with_sizes."""
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.splits = [16, 16]
            self.c1, self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)

        def forward(self, x):
            p, q = torch.split(self.c1(x), self.splits, 1)
            return torch.cat([self.a(p), self.b(q)], 1)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    res = pyprune.prune(Split().eval(), x, method="l1", ratio=0.5, iterative_steps=steps)
    assert res.model.splits == [8, 8]
    loaded, _ = load_model(save_model(tmp_path / "s.pt", res.model), model=Split())
    assert loaded.splits == [8, 8] and torch.equal(loaded(x), res.model(x))
    # a loaded model saved again (as finetune does) keeps them too
    again, _ = load_model(save_model(tmp_path / "again.pt", loaded), model=Split())
    assert again.splits == [8, 8] and torch.equal(again(x), res.model(x))


@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_counts_come_back_without_the_attributes(tmp_path, affine):
    """save_model without ``attributes=``: an InstanceNorm's ``num_features`` (which it checks
    against its input, affine or not) is saved with every checkpoint and set again, as a
    grouped conv's counts are; before, the load succeeded and the first call failed."""
    torch.manual_seed(0)
    model = lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.InstanceNorm2d(16, affine=affine),  # noqa: E731
                                  nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    res = pyprune.prune(model(), x, method="l1", ratio=0.5)
    loaded, _ = load_model(save_model(tmp_path / "n.pt", res.model), model=model())
    assert loaded[1].num_features == 8
    assert torch.equal(loaded(x), res.model(x))


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    model = get_model("resnet20_cifar", num_classes=10)
    good = save_model(tmp_path / "g.pt", model, arch="resnet20_cifar", arch_kwargs={"num_classes": 10})
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a pyprune checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_model(good, model=get_model("resnet56_cifar", num_classes=10))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


# -- CLI -------------------------------------------------------------------------------------------
def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "pyprune", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_cli_run_end_to_end(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: digits_cnn\ndataset: digits\nepochs: 3\nfinetune_epochs: 2\nmethod: l1\nratio: 0.25\n"
                   f"out: {tmp_path / 'run'}\n")
    p = run_cli("run", "--config", str(cfg))
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["method"] == "l1" and res["ratio"] == 0.25 and res["dataset"] == "digits"
    assert res["base"]["top1"] > 0.9
    assert res["pruned"]["params"] < res["base"]["params"] and res["pruned"]["macs"] < res["base"]["macs"]
    assert res["pruned"]["top1"] > 0.85
    assert f"results written to {tmp_path / 'run' / 'results.json'}" in p.stdout
    # the pruned checkpoint evaluates to the same accuracy
    e = run_cli("evaluate", "--checkpoint", str(tmp_path / "run" / "pruned.pt"), "--out", str(tmp_path / "m.json"))
    assert e.returncode == 0, e.stderr[-2000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert abs(m["top1"] - res["pruned"]["top1"]) < 1e-9 and m["params"] == res["pruned"]["params"]


@pytest.fixture
def cli(capsys):
    """The command line's `main` in this process (the same code a subprocess runs, without
    a fresh interpreter importing torch each time); each call gives a CompletedProcess-like
    result. Tests run one command through `run_cli` as a user does and the rest through this."""
    from types import SimpleNamespace

    from pyprune.cli import main

    def call(*args):
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)

    return call


def test_cli_prints_pyprune_warnings_as_its_own_messages(tmp_path, cli):
    p = cli("prune", "--model", "resnet18", "--num-classes", "10", "--size", "32", "--ratio", "auto",
            "--out", str(tmp_path / "p.pt"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pyprune prune: warning: ratio='auto' found no elbow in the k-means distortion curve" in p.stderr
    assert "UserWarning" not in p.stderr


@pytest.mark.parametrize("line, names", [
    ("method: kmeanz", "config c.yaml: method: 'kmeanz' is not one of"),
    ("ratio: 1.5", "config c.yaml: ratio: the fraction of channels removed must be a number in [0, 1)"),
    ("schedule: taperz", "config c.yaml: schedule: 'taperz' is not one of"),
    ("finetune_epochs: -2", "config c.yaml: finetune_epochs: must be an integer >= 0"),
    ("no_augment: 1", "config c.yaml: no_augment: expected true or false, got 1"),
    ("epochs: 2.5", "config c.yaml: epochs: must be an integer >= 0, got '2.5'"),
    ("ratios: [0.5]", "unknown option(s) ['ratios']"),
    ("target_speedup: 0.5", "target_speedup: expected a speedup >= 1"),
    ("taper: -1", "taper must be a finite number >= 0"),
    ("distill: true\ndistill_weight: 2", "distill_temperature must be > 0 and distill_weight in [0, 1]"),
    ("kmeans_iter: 5", "unknown option(s) ['kmeans_iter']"),
    ("schedule: sensitivity", "config c.yaml: schedule: 'sensitivity' is not one of"),  # (needs Python's sensitivity=)
])
def test_cli_run_refuses_a_bad_config_value_before_it_trains(tmp_path, monkeypatch, cli, line, names):
    """argparse checks neither a default's choices nor a non-string default, and run() used
    to meet the prune and fine-tune options only after the training (a typo cost the whole
    training): each bad value now stops the command first, naming the file's key."""
    import pyprune.train

    monkeypatch.chdir(tmp_path)
    trained = []
    monkeypatch.setattr(pyprune.train, "fit", lambda *a, **k: trained.append(1))
    (tmp_path / "c.yaml").write_text(f"model: digits_cnn\ndataset: digits\nepochs: 1\n{line}\n")
    p = cli("run", "--config", "c.yaml", "--out", "o")
    assert p.returncode != 0 and names in p.stderr, p.stderr
    assert not trained and not (tmp_path / "o" / "base.pt").exists()


def test_cli_run_config_null_is_the_default_and_auto_ratio_writes_strict_json(tmp_path, cli):
    """``key: null`` in a config means the option's default (a null ratio beside a budget is
    not a second budget); ratio="auto" is recorded as "auto" in results.json and the
    checkpoint (the plan holds NaN there, which strict JSON cannot spell)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: digits_cnn\nepochs: 1\nfinetune_epochs: 0\nratio: null\ndata_dir: null\n"
                   f"target_params: 0.6\nmethod: l1\nout: {tmp_path / 'a'}\n")
    from pyprune.cli._parser import parse

    args = parse(["run", "--config", str(cfg)])
    assert args.target_params == 0.6 and args.ratio == 0.5  # the default, replaced by the budget in prune
    cfg.write_text(f"model: digits_cnn\nepochs: 1\nfinetune_epochs: 0\nratio: auto\nout: {tmp_path / 'b'}\n")
    p = cli("run", "--config", str(cfg), "--max-steps", "3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "ratio auto (" in p.stdout and "nan" not in p.stdout

    def strict(c):
        raise ValueError(f"not JSON: {c}")

    res = json.loads((tmp_path / "b" / "results.json").read_text(), parse_constant=strict)
    assert res["ratio"] == "auto"
    assert load_model(tmp_path / "b" / "pruned.pt")[1]["ratio"] == "auto"


def test_cli_prune_finetune_sweep(tmp_path, cli):
    base = tmp_path / "t"
    assert run_cli("train", "--epochs", "2", "--out", str(base), "--quiet").returncode == 0
    p = cli("prune", "--checkpoint", str(base / "model.pt"), "--method", "kmeans", "--ratio", "0.5",
            "--out", str(tmp_path / "p.pt"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "total params" in p.stdout and "pruned model written to" in p.stdout
    f = cli("finetune", "--checkpoint", str(tmp_path / "p.pt"), "--epochs", "1", "--out", str(tmp_path / "f.pt"))
    assert f.returncode == 0, f.stderr[-2000:]
    s = cli("sweep", "--checkpoint", str(base / "model.pt"), "--methods", "l1", "random", "--ratios", "0.5",
            "--finetune-epochs", "0", "--out", str(tmp_path / "sw"))
    assert s.returncode == 0, s.stderr[-2000:]
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["unpruned", "l1", "random"]
    # recovery is on by default (the command's training data calibrates); off, one shot falls
    s2 = cli("sweep", "--checkpoint", str(base / "model.pt"), "--methods", "l1", "--ratios", "0.5",
             "--finetune-epochs", "0", "--no-recalibrate", "--no-reconstruct", "--out", str(tmp_path / "sw2"))
    assert s2.returncode == 0, s2.stderr[-2000:]
    plain = json.loads((tmp_path / "sw2" / "sweep.json").read_text())["rows"][1]["top1_before_ft"]
    assert rows[1]["top1_before_ft"] > plain
    # distillation from the unpruned checkpoint
    f2 = cli("finetune", "--checkpoint", str(tmp_path / "p.pt"), "--epochs", "1", "--teacher",
             str(base / "model.pt"), "--distill-weight", "0.7", "--out", str(tmp_path / "f2.pt"))
    assert f2.returncode == 0, f2.stderr[-2000:]


def test_cli_errors_and_help(tmp_path, capsys):
    p = run_cli("prune", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt"))
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = run_cli("train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "never downloads" in p.stderr
    h = run_cli("prune", "--help")  # once as a user runs it, every command's help in process
    assert h.returncode == 0 and "usage: pyprune prune" in h.stdout
    from pyprune.cli._parser import build_parser

    for cmd in ("train", "prune", "finetune", "evaluate", "run", "sweep", "demo", "info", "export", "bench"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([cmd, "--help"])
        assert e.value.code == 0 and "usage: pyprune " + cmd in capsys.readouterr().out


def test_cli_explicit_flag_beats_config(tmp_path, capsys):
    """A config file gives the defaults; a flag given explicitly wins even when its value
    equals the built-in default (here --epochs 20 against a config's 3)."""
    from pyprune.cli._parser import parse

    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nmethod: l1\nratio: 0.25\n")
    args = parse(["run", "--config", str(cfg), "--epochs", "20", "--method", "kmeans"])
    assert (args.epochs, args.method, args.ratio) == (20, "kmeans", 0.25)
    args = parse(["run", "--config", str(cfg)])
    assert (args.epochs, args.method, args.ratio) == (3, "l1", 0.25)
    toml = tmp_path / "c.toml"
    toml.write_text("epochs = 4\n")
    assert parse(["run", "--epochs", "7", "--config", str(toml)]).epochs == 7
    cfg.write_text("epochz: 3\n")
    assert parse(["run", "--config", str(cfg)]) is None
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err


def test_cli_version_and_schedules_from_registry(capsys):
    from pyprune.cli._parser import build_parser
    from pyprune.schedule import available_schedules

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.startswith("pyprune ")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--checkpoint", "a", "--out", "b", "--schedule", "nope"])
    err = capsys.readouterr().err
    # the registry's schedules, but for those that need accuracy curves only Python can give
    # (sensitivity=): a command could only fail with them, after its training
    from pyprune.schedule import schedule_spec

    runnable = [s for s in available_schedules() if not schedule_spec(s).needs_sensitivity]
    assert "sensitivity" in available_schedules() and "sensitivity" not in runnable
    assert f"choose from {', '.join(map(repr, runnable))}" in err, err


def test_unreadable_files_get_pyprunes_advice_not_torchs(tmp_path):
    """Random bytes as a checkpoint or weights file: the error names the file and never
    repeats torch's advice to retry with weights_only=False (unsafe for files from others)."""
    from pyprune.models import get_model

    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    for call in (lambda: load_model(junk), lambda: get_model("digits_cnn", weights=junk)):
        with pytest.raises(CheckpointError) as e:
            call()
        assert str(junk) in str(e.value) and "weights_only" not in str(e.value)
    plain = tmp_path / "plain.pt"
    torch.save({"a": [1, 2]}, plain)
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        get_model("digits_cnn", weights=plain)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from pyprune.models import digits_cnn

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "base.pt"
    save_model(path, digits_cnn(), arch="digits_cnn", arch_kwargs={"num_classes": 10, "in_channels": 1},
               meta={"dataset": "digits", "size": 8, "in_channels": 1, "num_classes": 10})
    return path


def test_cli_never_overwrites_without_force_and_never_the_input(tmp_path, small_checkpoint, cli):
    base = tmp_path / "base.pt"
    base.write_bytes(small_checkpoint.read_bytes())
    original = base.read_bytes()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    p = run_cli("prune", "--checkpoint", str(base), "--method", "l1", "--out", str(precious))
    assert p.returncode == 2 and f"{precious} already exists" in p.stderr and "--force" in p.stderr
    assert precious.read_text() == "keep me"
    for extra in ([], ["--force"]):
        p = cli("prune", "--checkpoint", str(base), "--method", "l1", "--out", str(base), *extra)
        assert p.returncode == 2 and "also the input" in p.stderr
        assert base.read_bytes() == original
    p = cli("prune", "--checkpoint", str(base), "--method", "l1", "--out", str(precious), "--force")
    assert p.returncode == 0, p.stderr[-2000:]
    assert load_model(precious)[0][0].out_channels == 16


def test_cli_unwritable_output_fails_before_any_work(tmp_path, small_checkpoint):
    """An output whose folder cannot be made (a file stands where the folder would be) is
    refused at once, naming the user's path, not a temp file after the work."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = run_cli("prune", "--checkpoint", str(small_checkpoint), "--out", str(blocker / "out.pt"))
    assert p.returncode == 2 and f"cannot create the folder {blocker}" in p.stderr
    assert "total params" not in p.stdout  # nothing was pruned
    p = run_cli("export", "--checkpoint", str(small_checkpoint), "--out", str(blocker / "m.onnx"))
    assert p.returncode == 2 and str(blocker) in p.stderr
    # a command refused after its outputs were checked leaves no empty folder behind
    p = run_cli("bench", str(small_checkpoint), "--runtimes", "nosuch", "--out", str(tmp_path / "b" / "c"))
    assert p.returncode == 2 and "unknown runtime 'nosuch'" in p.stderr and not (tmp_path / "b").exists()


_SLOW_WRITES = {  # a write that stops (killed) after the file's bytes, or the first file of a pair, are out
    ".pt": """
real = torch.save
def slow_save(obj, f):
    real(obj, f)
    with open(f, "ab") as fh:
        fh.write(b"partial")
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
""",
    ".safetensors": """
real = json.dumps
def slow_dumps(*a, **k):
    print("writing", flush=True)
    time.sleep(60)
    return real(*a, **k)
json.dumps = slow_dumps
"""}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_atomic_save_survives_a_kill(tmp_path, suffix):
    """A process killed while it writes a checkpoint leaves the old file whole (and no
    stray temporary file gets the checkpoint's name). A .safetensors file and its .json
    are written whole to temporary files first, then renamed: killed while writing the
    second, the old pair loads as it was (the tensors used to be replaced first, and the old
    .json no longer matched them)."""
    path = tmp_path / f"model{suffix}"
    save_model(path, nn.Linear(4, 3), meta={"v": 1})
    code = ("import json, time, torch, pyprune.checkpoint as c\n" + _SLOW_WRITES[suffix]
            + f"c.save_model({str(path)!r}, torch.nn.Linear(4, 5), meta={{'v': 2}})\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        try:
            assert proc.stdout.readline().strip() == "writing"
        finally:
            proc.kill()
    model, meta = load_model(path, nn.Linear(4, 3))
    assert meta == {"v": 1} and model.out_features == 3
    # (a kill leaves its temporary files, hidden, never under the checkpoint's names)
    names = {".pt": ["model.pt"], ".safetensors": ["model.json", "model.safetensors"]}[suffix]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == names


def test_cli_prunes_any_model_by_name_with_local_weights(tmp_path, cli):
    """--model takes torchvision names and timm:<name>, --weights a state_dict (.pth) or a
    .safetensors file; the pruned model can be written as .safetensors + JSON spec and loads
    back at its pruned widths (split sizes rewritten by pruning included)."""
    from safetensors.torch import save_file

    from pyprune.checkpoint import load_model

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    save_file(net.state_dict(), str(tmp_path / "r18.safetensors"))
    for call, weights, out in ((run_cli, "r18.pth", "a.safetensors"), (cli, "r18.safetensors", "b.pt")):
        p = call("prune", "--model", "resnet18", "--weights", str(tmp_path / weights), "--size", "64",
                 "--method", "l2", "--out", str(tmp_path / out))
        assert p.returncode == 0, p.stderr[-2000:]
        model, meta = load_model(tmp_path / out)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)  # the file's head is kept
        assert sum(q.numel() for q in model.parameters()) < 0.35 * sum(q.numel() for q in net.parameters())
    assert (tmp_path / "a.json").is_file()
    pytest.importorskip("timm", reason="timm models need the timm package")
    p = cli("prune", "--model", "timm:mixnet_s", "--num-classes", "10", "--size", "64", "--method", "l2",
            "--out", str(tmp_path / "mix.pt"))
    assert p.returncode == 0, p.stderr[-2000:]
    model, _ = load_model(tmp_path / "mix.pt")
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    both = cli("prune", "--model", "resnet18", "--checkpoint", str(tmp_path / "b.pt"), "--out", str(tmp_path / "c.pt"))
    assert both.returncode != 0 and "either --checkpoint" in both.stderr


def test_cli_trains_an_rgb_torchvision_model_on_grayscale_digits(tmp_path, cli):
    p = run_cli("train", "--model", "resnet18", "--dataset", "digits", "--size", "32", "--epochs", "1",
                "--max-steps", "2", "--out", str(tmp_path / "t"), "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    p = cli("train", "--model", "resnet18", "--dataset", "digits", "--size", "32", "--in-channels", "3",
            "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / "t3"), "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]


def test_ctrl_c_says_how_to_resume_and_resuming_says_so(tmp_path):
    """SIGINT during `pyprune train` (after an epoch was saved): exit 130 and a message that
    says how to resume; the same command again resumes and says from where."""
    import signal
    import time

    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "pyprune", "train", "--epochs", "200", "--out", str(out)]
    # as from a terminal: a shell that runs the suite in the background hands its children
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = out / "train_state.pt"
    t0 = time.time()
    while not state.exists() and time.time() - t0 < 300 and p.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Run the same command again to resume" in err
    again = subprocess.run(cmd + ["--max-steps", "1"], capture_output=True, text=True, timeout=600)  # stop at once
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr


def test_fixed_batch_onnx_gets_a_hint_not_a_traceback(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    from pyprune.models import digits_cnn

    model = digits_cnn().eval()
    pyprune.export(model, torch.randn(1, 1, 8, 8), "onnx", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"fixed batch of 1.*--dynamic-batch"):
        pyprune.benchmark(tmp_path / "m.onnx", (1, 1, 8, 8), batch_sizes=(1, 8))
    with pytest.raises(ValueError, match=r"m\.onnx takes inputs of shape 1x1x8x8, not 3x8x8 per item: pass --shape 1 8 8"):
        pyprune.benchmark(tmp_path / "m.onnx", (1, 3, 8, 8), batch_sizes=(1,))


def test_a_pte_is_benchmarked_at_the_shape_it_was_made_for(tmp_path, cli):
    """A .pte holds one input shape: another batch or item shape is refused before any
    timing, with what to pass (it used to end in the runtime's error 0x10 and a traceback);
    a RuntimeError the CLI does meet is one error line."""
    pytest.importorskip("executorch", reason="the .pte export needs executorch")
    from pyprune.models import digits_cnn

    pyprune.export(digits_cnn().eval(), torch.randn(1, 1, 8, 8), "executorch", tmp_path / "m.pte")
    p = cli("bench", str(tmp_path / "m.pte"), "--shape", "1", "8", "8", "--out", str(tmp_path / "b"))
    assert p.returncode == 2 and "fixed batch of 1, so it cannot run batch 8, 32: benchmark --batch-sizes 1" in p.stderr
    p = cli("bench", str(tmp_path / "m.pte"), "--shape", "1", "16", "16", "--batch-sizes", "1", "--out",
            str(tmp_path / "b"))
    assert p.returncode == 2 and "takes inputs of shape 1x1x8x8, not 1x16x16 per item: pass --shape 1 8 8" in p.stderr
    teacher = tmp_path / "rgb.pt"
    pyprune.checkpoint.save_model(teacher, digits_cnn(in_channels=3).eval(), arch="digits_cnn",
                                  arch_kwargs={"in_channels": 3}, meta={"in_channels": 3, "size": 8})
    student = tmp_path / "s.pt"
    pyprune.checkpoint.save_model(student, digits_cnn().eval(), arch="digits_cnn",
                                  meta={"in_channels": 1, "size": 8, "dataset": "digits"})
    p = cli("finetune", "--checkpoint", str(student), "--teacher", str(teacher), "--epochs", "1", "--max-steps", "1",
            "--out", str(tmp_path / "f.pt"))
    assert p.returncode == 2 and f"the teacher {teacher} does not take the student's input (1x8x8)" in p.stderr
    import pyprune.cli._commands as commands

    def fails(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(commands, "info", fails)
        p = cli("info", "digits_cnn")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "pyprune info: error: mat1 and mat2" in p.stderr and "PYPRUNE_DEBUG=1 shows where" in p.stderr


def test_demo_runs_and_repeats_itself_exactly(tmp_path, cli):
    """The demo (short: 2 base epochs, two methods, 1 fine-tuning epoch, no edge step) announces its steps
    and their times, writes its results, and a rerun with the same seed gives the same numbers."""
    runs = []
    for out in ("a", "b"):
        p = cli("demo", "--epochs", "2", "--finetune-epochs", "1", "--methods", "kmeans", "l1", "--no-edge",
                "--out", str(tmp_path / out))
        assert p.returncode == 0, p.stderr[-2000:]
        for step in ("[1/3]", "[2/3]", "[3/3]", "(step 2:", "training, pruning and comparing:"):
            assert step in p.stdout, (step, p.stdout[-2000:])
        runs.append(json.loads((tmp_path / out / "results.json").read_text()))
    a, b = runs
    assert a["one_shot"] == b["one_shot"] and len(a["rows"]) == 3  # unpruned and two methods
    assert [r["top1"] for r in a["rows"]] == [r["top1"] for r in b["rows"]]
    assert {r["recipe"] for r in a["one_shot"]} >= {"one-shot", "+ BN recalibration", "+ reconstruction"}
    assert 0 < a["main_s"] <= a["wall_s"]
    # a second demo into the same folder replaces its results only with --force (as `make demo` passes)
    before = (tmp_path / "a" / "results.json").read_bytes()
    p = cli("demo", "--epochs", "1", "--finetune-epochs", "0", "--methods", "l1", "--no-edge", "--out",
            str(tmp_path / "a"))
    assert p.returncode == 2 and "already exists: pass --force" in p.stderr
    assert (tmp_path / "a" / "results.json").read_bytes() == before


# -- CLI: what a user gets wrong, refused before any work; data never taken from elsewhere ---------
def test_cli_reprune_of_a_checkpoint_without_data_never_recovers_on_other_data(tmp_path, small_checkpoint, cli):
    """A checkpoint that records no data set (as `prune --model` writes one) pruned again without
    --dataset: BN statistics and layers are not refitted on some other data (the digits); a note
    says why and which flag gives data. A method that needs data is refused."""
    model, meta = load_model(small_checkpoint)
    with torch.no_grad():
        model[1].running_mean.copy_(torch.arange(32.0))  # a BN statistic no recalibration would keep
    meta.pop("dataset")
    nodata = tmp_path / "nodata.pt"
    save_model(nodata, model, arch="digits_cnn", arch_kwargs={"num_classes": 10, "in_channels": 1}, meta=meta)
    p = cli("prune", "--checkpoint", str(nodata), "--method", "l1", "--out", str(tmp_path / "p.pt"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "BN recalibrated" not in p.stdout and "reconstructed" not in p.stdout
    assert "records no data set" in p.stderr and "--dataset" in p.stderr and "skipped" in p.stderr
    pruned, _ = load_model(tmp_path / "p.pt")
    assert set(pruned[1].running_mean.tolist()) <= set(range(32))  # the statistics kept, only cut
    t = cli("prune", "--checkpoint", str(nodata), "--method", "taylor", "--out", str(tmp_path / "t.pt"))
    assert t.returncode == 2 and "scores channels from data" in t.stderr and "--dataset" in t.stderr
    assert not (tmp_path / "t.pt").exists()
    d = cli("prune", "--checkpoint", str(nodata), "--method", "l1", "--dataset", "digits", "--out",
            str(tmp_path / "d.pt"))
    assert d.returncode == 0, d.stderr[-2000:]
    assert "BN recalibrated on" in d.stdout and "skipped" not in d.stderr
    assert load_model(tmp_path / "d.pt")[1]["dataset"] == "digits"  # the next prune of it calibrates the same


def test_cli_sweep_checks_every_method_and_ratio_before_any_work(tmp_path, small_checkpoint, cli):
    for bad, message in ((["--methods", "l1", "kmean", "--ratios", "0.5"], "invalid choice: 'kmean'"),
                         (["--methods", "l1", "--ratios", "0.5", "1.5"], "must be a number in [0, 1), got '1.5'")):
        p = cli("sweep", "--checkpoint", str(small_checkpoint), *bad, "--finetune-epochs", "0",
                "--out", str(tmp_path / "sw"))
        assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
        assert "top-1" not in p.stdout and not (tmp_path / "sw").exists()
    # what only pruning knows (a speedup below 1) is checked for every one before the first
    # checkpoint is loaded and fine-tuned
    import pyprune.cli._commands as commands

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(commands, "_load_and_evaluate", lambda args: pytest.fail("loaded before the options were checked"))
        p = cli("sweep", "--checkpoint", str(small_checkpoint), "--methods", "l1", "--speedups", "1.5", "0.5",
                "--out", str(tmp_path / "sw"))
    assert p.returncode != 0 and "target_speedup: expected a speedup >= 1" in p.stderr, p.stderr[-2000:]
    # the single prune command says the same
    p = cli("prune", "--checkpoint", str(small_checkpoint), "--ratio", "1.5", "--out", str(tmp_path / "p.pt"))
    assert p.returncode == 2 and "must be a number in [0, 1) or 'auto', got '1.5'" in p.stderr
    p = cli("prune", "--checkpoint", str(small_checkpoint), "--method", "kmean", "--out", str(tmp_path / "p.pt"))
    assert p.returncode == 2 and "invalid choice: 'kmean'" in p.stderr


def test_cli_named_model_gets_its_own_input_size(tmp_path, cli):
    for name, shape in (("digits_cnn", "1x8x8"), ("vgg11_cifar", "3x32x32"), ("resnet18", "3x224x224")):
        p = cli("info", name)
        assert p.returncode == 0, p.stderr[-2000:]
        assert f"MACs at {shape}" in p.stdout
    p = cli("prune", "--model", "digits_cnn", "--method", "l1", "--out", str(tmp_path / "d.pt"))
    assert p.returncode == 0, p.stderr[-2000:]
    model, meta = load_model(tmp_path / "d.pt")
    assert (meta["in_channels"], meta["size"]) == (1, 8) and model(torch.zeros(2, 1, 8, 8)).shape == (2, 1000)
    # an input the model does not take: the flags that set it, not advice a CLI user cannot follow
    for args in (("info", "digits_cnn", "--size", "32"),
                 ("prune", "--model", "digits_cnn", "--size", "32", "--out", str(tmp_path / "e.pt"))):
        p = cli(*args)
        assert p.returncode == 2 and "--size" in p.stderr and "1x32x32" in p.stderr, p.stderr[-2000:]
        assert "Pass example inputs" not in p.stderr


def test_cli_bench_takes_a_safetensors_checkpoint(tmp_path, small_checkpoint, cli):
    model, meta = load_model(small_checkpoint)
    save_model(tmp_path / "m.safetensors", model, arch="digits_cnn",
               arch_kwargs={"num_classes": 10, "in_channels": 1}, meta=meta)
    p = cli("bench", str(tmp_path / "m.safetensors"), "--runtimes", "eager", "--threads", "1", "--batch-sizes", "1",
            "--repeats", "3", "--out", str(tmp_path / "b"))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert "eager" in json.dumps(rows)


@pytest.mark.parametrize("argv", [["info", "resnet18", "--size", "0"], ["info", "resnet18", "--size", "-3"],
                                  ["prune", "--model", "resnet18", "--size", "0", "--out", "o.pt"],
                                  ["prune", "--model", "resnet18", "--in-channels", "0", "--out", "o.pt"],
                                  ["latency-table", "resnet18", "--size", "-1"],
                                  ["train", "--size", "0"], ["export", "--checkpoint", "a.pt", "--out", "b.onnx",
                                                             "--size", "0"],
                                  ["bench", "a.pt", "--shape", "3", "0", "8"], ["bench", "a.pt", "--repeats", "0"]],
                         ids=lambda a: " ".join(a))
def test_cli_refuses_non_positive_sizes_as_it_parses(argv, capsys):
    from pyprune.cli._parser import parse

    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


def test_cli_refuses_two_budgets_given_at_once(tmp_path, capsys):
    from pyprune.cli._parser import parse

    base = ["prune", "--checkpoint", "a.pt", "--out", "b.pt"]
    for extra, names in ((["--ratio", "0.5", "--target-macs", "0.5"], "--ratio and --target-macs"),
                         (["--target-params", "0.5", "--ratio=0.3"], "--ratio and --target-params"),
                         (["--target-params", "0.5", "--target-latency", "3"], "--target-params and --target-latency"),
                         (["--max-macs", "1000", "--target-speedup", "2"], "--max-macs and --target-speedup")):
        with pytest.raises(SystemExit) as e:
            parse(base + extra)
        assert e.value.code == 2 and names in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["sweep", "--checkpoint", "a.pt", "--ratios", "0.5", "--speedups", "2"])
    assert "--ratios and --speedups" in capsys.readouterr().err
    # one budget beside the default ratio is no conflict
    args = parse(base + ["--target-macs", "0.5"])
    assert args.target_macs == 0.5 and parse(["sweep", "--checkpoint", "a.pt", "--speedups", "2"]).speedups == [2.0]
    # run --config: two budgets in the file are refused; one on the command line replaces the file's
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ratio: 0.3\ntarget_macs: 0.5\n")
    assert parse(["run", "--config", str(cfg)]) is None
    assert "ratio and target_macs" in capsys.readouterr().err
    args = parse(["run", "--config", str(cfg), "--ratio", "0.2"])
    assert (args.ratio, args.target_macs) == (0.2, None)
    args = parse(["run", "--config", str(cfg), "--target-params", "0.4"])
    assert (args.target_params, args.target_macs) == (0.4, None)


def test_cli_checkpoint_commands_use_the_data_set_the_checkpoint_records(tmp_path, small_checkpoint, cli):
    """evaluate (as finetune, sweep and export --int8) read the checkpoint's own data set when
    --dataset is not given; a checkpoint that records none is refused with the flag to pass,
    never evaluated on the digits by default."""
    model, meta = load_model(small_checkpoint)
    e = cli("evaluate", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.json"))
    assert e.returncode == 0, e.stderr[-2000:]
    assert json.loads((tmp_path / "m.json").read_text())["dataset"] == "digits"  # the data set it records
    meta.pop("dataset")
    nodata = tmp_path / "nodata.pt"
    save_model(nodata, model, arch="digits_cnn", arch_kwargs={"num_classes": 10, "in_channels": 1}, meta=meta)
    for args in (["evaluate"], ["finetune", "--epochs", "1", "--out", str(tmp_path / "f.pt")]):
        r = cli(*args, "--checkpoint", str(nodata))
        assert r.returncode == 2 and "records no data set" in r.stderr and "--dataset" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "f.pt").exists()
    d = cli("evaluate", "--checkpoint", str(nodata), "--dataset", "digits", "--out", str(tmp_path / "d.json"))
    assert d.returncode == 0 and json.loads((tmp_path / "d.json").read_text())["dataset"] == "digits"


class _Fixed(nn.Module):
    """Logits that predict `preds[i]` for input row i (the row's first value is i)."""

    def __init__(self, preds, classes):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.as_tensor(preds), classes).float())
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.logits[x[:, 0].long()] * self.w


def test_evaluate_scores_as_the_textbook_does():
    """Macro-F1 over every class that is a label or a prediction (scikit-learn's), labels
    checked, non-finite outputs refused, the model's mode restored even on an error."""
    from sklearn.metrics import f1_score

    from torch.utils.data import TensorDataset

    y_true, y_pred = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 3]
    x = torch.arange(6.0)[:, None]
    m = evaluate(_Fixed(y_pred, 4), TensorDataset(x, torch.tensor(y_true)))
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*from -1"):
        evaluate(_Fixed(y_pred, 4), TensorDataset(x, torch.tensor([0, 0, 1, 1, 2, -1])))
    with pytest.raises(ValueError, match="labels must be int class indices"):
        evaluate(_Fixed(y_pred, 4), TensorDataset(x, torch.tensor(y_true, dtype=torch.float32)))
    nan = _Fixed(y_pred, 4).train()
    with torch.no_grad():
        nan.w.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite outputs"):
        evaluate(nan, TensorDataset(x, torch.tensor(y_true)))
    assert nan.training


def test_fit_stops_on_a_non_finite_loss_and_leaves_the_teachers_mode():
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model, teacher = nn.Sequential(nn.Linear(4, 3)).train(), nn.Sequential(nn.Linear(4, 3)).train()
    fit(model, TensorDataset(x, y), epochs=1, lr=1e-2, optimizer="sgd", progress=False, teacher=teacher)
    assert not model.training and teacher.training  # the model ready to evaluate; the teacher as it came
    with pytest.raises(ValueError, match="^lr must be a finite number"):
        fit(model, TensorDataset(x, y), epochs=1, lr=float("nan"), optimizer="sgd", progress=False)
    bad = x.clone()
    bad[5, 1] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"loss became non-finite \(here nan\) at epoch 1, step 1"):
        fit(model, TensorDataset(bad, y), epochs=1, lr=1e-2, batch_size=64, optimizer="sgd", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step on it


def test_a_one_pass_calibration_iterator_serves_every_stage():
    """A generator of batches: read once, so BN recalibration and reconstruction both see
    every batch (reconstruction found it empty)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    data = torch.randn(32, 3, 8, 8)
    listed = pyprune.prune(model, data[:1], method="l1", ratio=0.5, calibration=[data[i:i + 8] for i in range(0, 32, 8)])
    once = pyprune.prune(model, data[:1], method="l1", ratio=0.5,
                         calibration=(data[i:i + 8] for i in range(0, 32, 8)))
    assert once.recovery["bn_batches"] == 4 and set(once.recovery["reconstruction"].layers) == {"3"}
    torch.testing.assert_close(once.model(data), listed.model(data))


def test_benchmark_checks_its_counts_before_exporting_and_keeps_the_mode(tmp_path, monkeypatch):
    from pyprune import bench

    monkeypatch.setattr(bench, "_prepare", lambda *a, **k: pytest.fail("exported before the checks"))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).train()
    for kw, match in [({"batch_sizes": [0]}, "^batch_sizes: expected a non-empty list of positive ints"),
                      ({"batch_sizes": [-1]}, "^batch_sizes"), ({"threads": [0]}, "^threads"),
                      ({"threads": []}, "^threads"), ({"repeats": 0}, "^repeats must be an int >= 1"),
                      ({"runtimes": []}, "^runtimes: give at least one")]:
        with pytest.raises(ValueError, match=match):
            pyprune.benchmark(model, (1, 1, 8, 8), **{"runtimes": ("eager",), **kw})
    monkeypatch.undo()
    res = pyprune.benchmark(model, (1, 1, 8, 8), runtimes=("eager",), threads=(1,), batch_sizes=(1,), repeats=1,
                            min_seconds=0.01, max_seconds=0.2, progress=False, workdir=tmp_path / "b")
    assert model.training and len(res.rows) == 1


def test_report_refuses_percent_accuracies_and_keeps_batches_and_commas_apart(tmp_path):
    import csv

    from pyprune.report import write_report

    with pytest.raises(ValueError, match=r"sweep\[0\]: top1 is a fraction in \[0, 1\], got 95.0 \(for 95.0%, give 0.95\)"):
        write_report(tmp_path / "a", sweep=[{"method": "l1", "ratio": 0.5, "top1": 95.0}])
    bench_rows = [{"runtime": "onnxruntime", "threads": 1, "batch": b, "ratio": r, "p50_s": 1e-3 * b * (1 - r)}
                  for b in (1, 8) for r in (0.0, 0.5)]
    out = tmp_path / "b"
    write_report(out, sweep=[{"method": "k,means", "ratio": 0.5, "top1": 0.9}], bench=bench_rows)
    with open(out / "accuracy_vs_ratio.csv", newline="") as f:
        assert next(iter(csv.DictReader(f)))["method"] == "k,means"
    with open(out / "latency_vs_ratio.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["batch"], r["ratio"]) for r in rows) == [("1", "0"), ("1", "0.5"), ("8", "0"), ("8", "0.5")]


def test_damaged_data_files_are_named(tmp_path):
    """A CIFAR folder missing a batch, a damaged batch file, an image PIL cannot read: a
    DataError naming the file (a truncated pickle was a bare UnpicklingError, a broken PNG a
    bare OSError from PIL at the first batch)."""
    from PIL import Image

    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    assert len(cifar(tmp_path / "c")[0]) == 20
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_3 of CIFAR-10: extract the whole"):
        cifar(tmp_path / "c")
    (folder / "data_batch_3").write_bytes((folder / "data_batch_2").read_bytes()[:100])
    with pytest.raises(DataError, match=r"could not be read .*: data_batch_3 is damaged; extract the archive again"):
        cifar(tmp_path / "c")
    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / cls / f"{i}.png")
    (tmp_path / "img" / "a" / "0.png").write_bytes((tmp_path / "img" / "a" / "1.png").read_bytes()[:40])
    train, val, _ = image_folder(tmp_path / "img", 8)
    with pytest.raises(DataError, match=r"0.png: not a readable image"):
        [train[i] for i in range(len(train))] + [val[i] for i in range(len(val))]


def test_a_training_state_from_another_run_is_not_resumed(tmp_path, small_checkpoint, cli):
    """finetune --force over an earlier output: the earlier run's training state (another
    input) is not resumed from; the new input is fine-tuned (it kept the first run's
    weights under the second's metadata)."""
    from pyprune.checkpoint import read

    out = tmp_path / "ft.pt"
    args = ("finetune", "--out", str(out), "--epochs", "1")
    p = cli(*args, "--checkpoint", str(small_checkpoint))
    assert p.returncode == 0, p.stderr[-2000:]
    first = read(out)["state_dict"]
    src = read(small_checkpoint)
    model, _ = load_model(small_checkpoint)
    with torch.no_grad():
        for t in model.parameters():
            t.mul_(0.5)
    other = tmp_path / "other.pt"
    save_model(other, model, arch=src.get("arch"), arch_kwargs=src.get("arch_kwargs"), meta=src.get("meta"))
    p = cli(*args, "--checkpoint", str(other), "--force")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "holds the training state of another run" in p.stderr
    second = read(out)["state_dict"]
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_a_safetensors_output_counts_with_its_json(tmp_path, small_checkpoint, cli):
    """The .json written beside a .safetensors output is an output too: never replaced
    without --force, never an input's."""
    notes = tmp_path / "st.json"
    notes.write_text('{"my": "notes"}')
    p = cli("prune", "--checkpoint", str(small_checkpoint), "--method", "l1", "--out", str(tmp_path / "st.safetensors"))
    assert p.returncode == 2 and f"{notes} already exists" in p.stderr
    assert notes.read_text() == '{"my": "notes"}'
    notes.unlink()
    assert cli("prune", "--checkpoint", str(small_checkpoint), "--method", "l1",
               "--out", str(tmp_path / "st.safetensors")).returncode == 0
    p = cli("prune", "--checkpoint", str(tmp_path / "st.safetensors"), "--out", str(notes), "--force")
    assert p.returncode == 2 and "also the input" in p.stderr


def test_cli_export_and_evaluate_take_the_flags_they_are_given(tmp_path, small_checkpoint, cli):
    """--size sets the exported input (it was the checkpoint's whatever the flag said: here
    a size the digits CNN's Linear cannot take, refused as such); a
    file named for another format, a dynamic batch ExecuTorch cannot take and a model of
    other classes than the data are refused in one line; a missing runtime is an error
    line, not a traceback."""
    p = cli("export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.onnx"), "--size", "16")
    assert p.returncode == 2 and "example input of shape (1, 1, 16, 16)" in p.stderr  # (its Linear takes 8 x 8)
    p = cli("export", "--checkpoint", str(small_checkpoint), "--format", "executorch", "--out", str(tmp_path / "e.onnx"))
    assert p.returncode == 2 and "a .onnx file is onnx's, not executorch's" in p.stderr
    p = cli("export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.safetensors"))
    assert p.returncode == 2 and "a .safetensors file is read as a checkpoint or weights file" in p.stderr
    assert not (tmp_path / "m.safetensors").exists()
    p = cli("export", "--checkpoint", str(small_checkpoint), "--format", "executorch", "--dynamic-batch",
            "--out", str(tmp_path / "e.pte"))
    assert p.returncode == 2 and "dynamic_batch: executorch programs are exported for one batch size" in p.stderr
    from pyprune.models import digits_cnn

    other = tmp_path / "seven.pt"
    save_model(other, digits_cnn(num_classes=7), arch="digits_cnn", arch_kwargs={"num_classes": 7, "in_channels": 1},
               meta={"dataset": "digits", "size": 8, "in_channels": 1, "num_classes": 7})
    p = cli("evaluate", "--checkpoint", str(other))
    assert p.returncode == 2 and "classifies 7 classes, the data set digits has 10" in p.stderr


def test_cli_a_missing_runtime_is_an_error_line(tmp_path, small_checkpoint, cli, monkeypatch):
    import importlib

    export_module = importlib.import_module("pyprune.export")

    def missing(fmt):
        raise ImportError(f"exporting to {fmt} needs its runtime: pip install it")

    monkeypatch.setattr(export_module, "_need", missing)
    p = cli("export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.onnx"))
    assert p.returncode == 2 and p.stderr.startswith("pyprune export: error: exporting to onnx needs its runtime")


def test_fit_and_evaluate_say_what_items_they_take():
    from torch.utils.data import DataLoader, TensorDataset

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    good = TensorDataset(x, y)
    cases = [(DataLoader(good), TypeError, "got a DataLoader: pass its .dataset"),
             (TensorDataset(x, y, y), ValueError, r"\(input, class label\) pair, got a tuple of 3"),
             (TensorDataset(x, y.float()), ValueError, "labels must be int class indices, got torch.float32"),
             (TensorDataset(x[:0], y[:0]), ValueError, "the data set is empty")]
    for data, err, match in cases:
        with pytest.raises(err, match=match):
            fit(model, data, epochs=1, progress=False)
        with pytest.raises(err, match=match):
            evaluate(model, data)
    with pytest.raises(ValueError, match="epochs must be an int"):
        fit(model, good, epochs=1.5, progress=False)


def test_fit_and_evaluate_take_numpy_items_and_streams():
    """Inputs as numpy arrays (collated into tensors) and an IterableDataset are data too."""
    from torch.utils.data import Dataset, IterableDataset

    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)

    class Arrays(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return xs[i], int(ys[i])

    class Stream(IterableDataset):
        def __iter__(self):
            return iter((torch.from_numpy(xs[i]), int(ys[i])) for i in range(16))

    model = nn.Sequential(nn.Linear(4, 3))
    fit(model, Arrays(), epochs=np.int64(1), progress=False)
    for data in (Arrays(), Stream()):
        assert sum(map(sum, evaluate(model, data, num_classes=3)["confusion"])) == 16
