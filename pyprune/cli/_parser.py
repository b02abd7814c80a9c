"""The argument parser of the `pyprune` command line."""
from __future__ import annotations

import argparse
import pathlib
import sys

from . import _commands as cmd

EXAMPLE_CONFIG = """\
# pyprune run --config this.yaml   (TOML works too: same keys; flags given explicitly win)
model: digits_cnn          # any pyprune.models / torchvision model name
dataset: digits            # digits | cifar10 | cifar100 | imagefolder
data_dir: null             # local folder for cifar*/imagefolder (never downloaded)
epochs: 20
finetune_epochs: 5
method: kmeans
ratio: 0.5
schedule: uniform
out: results/run
"""


def _fraction(v: str, auto: bool = False):
    """A fraction of channels removed, checked as the parser reads it (so a bad value stops the
    command before any work, with the same message for every command)."""
    if auto and v == "auto":
        return v
    try:
        r = float(v)
    except ValueError:
        r = None
    if r is None or not 0.0 <= r < 1.0:  # NaN fails the comparison too
        also = " or 'auto'" if auto else ""
        raise argparse.ArgumentTypeError(f"the fraction of channels removed must be a number in [0, 1){also}, "
                                         f"got {v!r}")
    return r


def _ratio(v: str):
    return _fraction(v, auto=True)


def _int_at_least(v: str, least: int, what: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = least - 1
    if n < least:
        raise argparse.ArgumentTypeError(f"must be {what}, got {v!r}")
    return n


def _positive_int(v: str) -> int:
    return _int_at_least(v, 1, "a positive integer")


def _count(v: str) -> int:
    """A count that may be 0 (epochs)."""
    return _int_at_least(v, 0, "an integer >= 0")


def _cli_schedules() -> list[str]:
    """The schedules a command can run: not those that need measured accuracy curves
    (``sensitivity=``, from Python: pyprune.sensitivity)."""
    from ..schedule import SCHEDULES

    return [n for n, spec in SCHEDULES.items() if not spec.needs_sensitivity]


CHECKPOINT_DATA = "digits | cifar10 | cifar100 | imagefolder (default: the data set the checkpoint records)"


def _add_data(p, dataset_default="digits", dataset_help=None):
    p.add_argument("--dataset", default=dataset_default,
                   help=dataset_help or "digits | cifar10 | cifar100 | imagefolder (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="local data folder (cifar*, imagefolder); nothing is downloaded")
    p.add_argument("--size", type=_positive_int, default=None,
                   help="input side in pixels (default: the data set's own)" if dataset_default else
                   "input side in pixels (default: the checkpoint's; with --model, the model's own: 8 for digits_cnn, "
                   "32 for the *_cifar models, else 224)")
    p.add_argument("--no-augment", action="store_true", help="switch training augmentation off")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed for data splits, initialisation and pruning (default 0; a command that reads "
                        "a checkpoint: the seed it was trained with, so its held-out split is the same)")


def _add_train(p, epochs=20):
    p.add_argument("--epochs", type=_count, default=epochs, help="training epochs (default %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="training batch size (default %(default)s)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="optimizer (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")


def _add_force(p):
    p.add_argument("--force", action="store_true",
                   help="replace output files that exist (never the input); without it an existing output is an error")


def _add_model(p, out_default: str):
    p.add_argument("--model", default="digits_cnn",
                   help="pyprune registry or torchvision model name, or timm:<name> (default %(default)s)")
    p.add_argument("--weights", default=None, help="local weights file to start from (the head is replaced)")
    p.add_argument("--in-channels", type=_positive_int, default=None,
                   help="input channels of the model (default: the data set's; digits repeated to 3 for RGB nets)")
    p.add_argument("--out", default=out_default, help="output folder (default %(default)s)")


def _add_schedule(p):
    p.add_argument("--schedule", choices=_cli_schedules(), default="uniform",
                   help="how the ratio is spread over the layers (default %(default)s)")
    p.add_argument("--taper", type=float, default=1.0, help="taper strength, 0 = uniform (default %(default)s)")
    p.add_argument("--round-to", type=_positive_int, default=None, help="keep channel counts at multiples of this")


def _add_prune(p):
    from ..criteria import available_criteria

    p.add_argument("--method", default="kmeans", choices=available_criteria(), metavar="METHOD",
                   help=f"criterion: {', '.join(available_criteria())} (default kmeans)")
    p.add_argument("--ratio", type=_ratio, default=0.5, help="fraction of channels removed (or 'auto' with kmeans)")
    _add_schedule(p)
    p.add_argument("--target-macs", type=float, default=None,
                   help="MACs budget as a fraction in (0, 1] of the model's, instead of --ratio")
    p.add_argument("--target-params", type=float, default=None,
                   help="parameter budget as a fraction in (0, 1] of the model's, instead of --ratio")
    p.add_argument("--max-macs", type=int, default=None, help="MACs budget as an absolute count, instead of --ratio")
    p.add_argument("--max-params", type=int, default=None,
                   help="parameter budget as an absolute count, instead of --ratio")
    p.add_argument("--target-latency", dest="target_latency_ms", type=float, default=None,
                   help="latency budget in ms per batch on --runtime, instead of --ratio (measured, see "
                        "'pyprune latency-table')")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="latency budget as a speedup over the unpruned model measured on --runtime")
    _add_latency_target(p)
    p.add_argument("--no-recalibrate", action="store_true",
                   help="keep the BatchNorm statistics as they were (default: re-estimated on training batches)")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="no layer-wise reconstruction (default: layers whose inputs were cut are refitted by least "
                        "squares on training batches)")


def _add_latency_target(p, solver: bool = True):
    from ..latency import RUNTIMES
    from ..prune import LATENCY_WEIGHTS

    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="latency targets: the runtime measured (default %(default)s)")
    p.add_argument("--runtime-threads", type=_positive_int, default=1,
                   help="latency targets: its threads (default %(default)s)")
    p.add_argument("--runtime-batch", type=_positive_int, default=1,
                   help="latency targets: the batch size (default %(default)s)")
    if solver:
        p.add_argument("--latency-weight", choices=list(LATENCY_WEIGHTS), default="balanced",
                       help="latency targets: what a channel is worth besides its score: the MACs or parameters it "
                            "carries, or the mix that keeps the most of both (default %(default)s)")


def _add_distill(p):
    p.add_argument("--distill", action="store_true", help="fine-tune with the unpruned model as teacher")
    p.add_argument("--distill-temperature", type=float, default=4.0, help="distillation temperature (default %(default)s)")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="weight of the distillation loss against the label loss, in [0, 1] (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..criteria import available_criteria

    p = argparse.ArgumentParser(prog="pyprune", description="Structured pruning of CNNs: train, prune, fine-tune, "
                                                            "evaluate, export, benchmark.")
    p.add_argument("--version", action="version", version=f"pyprune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    t = sub.add_parser("train", help="train a model (DDP under torchrun); writes OUT/model.pt and OUT/metrics.json")
    _add_model(t, "results/train")
    t.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default %(default)s)")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    _add_data(t)
    _add_train(t)
    _add_force(t)
    t.set_defaults(func=cmd.train)

    pr = sub.add_parser("prune", help="prune a checkpoint; writes the pruned checkpoint")
    pr.add_argument("--checkpoint", default=None, help="a pyprune checkpoint (.pt or .safetensors) to prune")
    pr.add_argument("--model", default=None,
                    help="instead of --checkpoint: a model name (pyprune's registry, torchvision, or timm:<name>)")
    pr.add_argument("--weights", default=None,
                    help="with --model: a local weights file (state_dict .pt/.pth, or .safetensors)")
    pr.add_argument("--in-channels", type=_positive_int, default=None,
                    help="with --model: input channels (default: the model's own: 1 for digits_cnn, else 3)")
    pr.add_argument("--num-classes", type=_positive_int, default=1000,
                    help="with --model: classifier outputs (default 1000; a weights file's head is kept as it is)")
    pr.add_argument("--out", required=True, help="pruned checkpoint file (.pt, or .safetensors + a .json spec)")
    pr.add_argument("--verbose", action="store_true", help="print every layer")
    _add_prune(pr)
    _add_data(pr, None, "digits | cifar10 | cifar100 | imagefolder: the data that calibrates recovery (default: "
                        "the checkpoint's; with --model, none: no recovery)")
    _add_force(pr)
    pr.set_defaults(func=cmd.prune)

    f = sub.add_parser("finetune", help="fine-tune a (pruned) checkpoint; resumable")
    f.add_argument("--checkpoint", required=True, help="a pyprune checkpoint (.pt)")
    f.add_argument("--out", required=True, help="fine-tuned checkpoint file")
    f.add_argument("--teacher", default=None, help="distil from this checkpoint (the unpruned model)")
    f.add_argument("--distill-temperature", type=float, default=4.0, help="distillation temperature (default %(default)s)")
    f.add_argument("--distill-weight", type=float, default=0.5,
                   help="weight of the distillation loss, in [0, 1] (default %(default)s)")
    _add_data(f, None, CHECKPOINT_DATA)
    _add_train(f, epochs=5)
    _add_force(f)
    f.set_defaults(func=cmd.finetune)

    e = sub.add_parser("evaluate", help="top-1, macro-F1, confusion matrix, params and MACs of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="a pyprune checkpoint (.pt)")
    e.add_argument("--out", default=None, help="write the metrics JSON here")
    _add_data(e, None, CHECKPOINT_DATA)
    _add_force(e)
    e.set_defaults(func=cmd.evaluate)

    r = sub.add_parser("run", help="train -> prune -> fine-tune -> evaluate from a YAML/TOML config or flags",
                       epilog="example config:\n" + EXAMPLE_CONFIG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--config", default=None, help="YAML or TOML file with the options below (flags given explicitly win)")
    _add_model(r, "results/run")
    r.add_argument("--finetune-epochs", type=_count, default=5, help="fine-tuning epochs after pruning (default %(default)s)")
    _add_data(r)
    _add_train(r)
    _add_prune(r)
    _add_distill(r)
    _add_force(r)
    r.set_defaults(func=cmd.run)

    s = sub.add_parser("sweep", help="several methods x ratios from one checkpoint; one results table")
    s.add_argument("--checkpoint", required=True, help="the trained pyprune checkpoint (.pt) to prune")
    s.add_argument("--methods", nargs="+", default=["kmeans", "l1", "random"], choices=available_criteria(),
                   metavar="METHOD", help=f"criteria to compare: {', '.join(available_criteria())} (default kmeans l1 "
                                          "random)")
    s.add_argument("--ratios", nargs="+", type=_fraction, default=[0.3, 0.5, 0.7],
                   help="fractions of channels removed, each in [0, 1) (default 0.3 0.5 0.7)")
    s.add_argument("--speedups", nargs="+", type=float, default=None,
                   help="latency targets instead of --ratios: speedups over the unpruned model measured on --runtime "
                        "(the table gets the measured latency of each, and report/ the accuracy-vs-latency curve)")
    _add_latency_target(s)
    s.add_argument("--finetune-epochs", type=_count, default=3, help="fine-tuning epochs per pruned model")
    s.add_argument("--out", default="results/sweep", help="output folder (default %(default)s)")
    s.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default %(default)s)")
    s.add_argument("--max-steps", type=int, default=None, help="stop each fine-tuning after this many steps")
    _add_schedule(s)
    s.add_argument("--no-recalibrate", action="store_true", help="keep the BatchNorm statistics as they were")
    s.add_argument("--no-reconstruct", action="store_true", help="no layer-wise reconstruction")
    _add_distill(s)
    _add_data(s, None, CHECKPOINT_DATA)
    _add_force(s)
    s.set_defaults(func=cmd.sweep)

    d = sub.add_parser("demo", help="train a CNN on the embedded digits, prune it with several methods, compare")
    d.add_argument("--out", default="results/demo", help="results folder (default: results/demo)")
    d.add_argument("--methods", nargs="+", default=["kmeans", "l1", "random"], choices=available_criteria(),
                   metavar="METHOD", help="criteria to compare (default kmeans l1 random)")
    d.add_argument("--ratio", type=_fraction, default=0.5, help="fraction of channels removed (default 0.5)")
    d.add_argument("--epochs", type=_count, default=20, help="training epochs of the base model (default %(default)s)")
    d.add_argument("--finetune-epochs", type=_count, default=5, help="fine-tuning epochs after pruning")
    d.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    d.add_argument("--no-edge", action="store_true", help="skip the export, benchmark and report steps")
    _add_force(d)
    d.set_defaults(func=cmd.demo)

    x = sub.add_parser("export", help="export a checkpoint to ONNX or ExecuTorch (.pte) and verify it")
    x.add_argument("--checkpoint", required=True, help="a pyprune checkpoint (.pt)")
    x.add_argument("--format", choices=["onnx", "executorch"], default="onnx", help="runtime format (default %(default)s)")
    x.add_argument("--out", required=True, help="output file (.onnx or .pte)")
    x.add_argument("--dynamic-batch", action="store_true", help="ONNX: allow any batch size")
    x.add_argument("--int8", action="store_true", help="static int8 quantization (calibrated on --dataset)")
    x.add_argument("--batch", type=_positive_int, default=1, help="batch size of the example input")
    _add_data(x, None, CHECKPOINT_DATA)
    _add_force(x)
    x.set_defaults(func=cmd.export)

    b = sub.add_parser("bench", help="latency/throughput/size of a checkpoint or exported file")
    b.add_argument("target", help="a pyprune checkpoint (.pt or .safetensors) or an exported file (.onnx, .pte, "
                                  ".pt2)")
    b.add_argument("--runtimes", nargs="+", default=None,
                   help="runtimes to time (default: eager, onnxruntime and executorch; an exported file: its own)")
    b.add_argument("--threads", nargs="+", type=_positive_int, default=[1, 2], help="thread counts to time")
    b.add_argument("--batch-sizes", nargs="+", type=_positive_int, default=[1, 8, 32], help="batch sizes to time")
    b.add_argument("--shape", nargs="+", type=_positive_int, default=None,
                   help="input shape without batch, e.g. 3 224 224 (default: the checkpoint's; needed for an exported "
                        "file)")
    b.add_argument("--repeats", type=_positive_int, default=50, help="timed runs per row (after warm-up)")
    b.add_argument("--out", default="results/bench", help="folder for bench.json and bench.csv")
    _add_force(b)
    b.set_defaults(func=cmd.bench)

    lt = sub.add_parser("latency-table", help="build (or show, when cached) the per-layer latency table of a model "
                                              "on a runtime, as latency targets use it")
    lt.add_argument("model", help="a pyprune checkpoint (.pt), or a registry/torchvision model name or timm:<name>")
    lt.add_argument("--size", type=_positive_int, default=None,
                    help="input side (default: the checkpoint's, else the model's own: 8 for digits_cnn, 32 for the "
                         "*_cifar models, else 224)")
    lt.add_argument("--in-channels", type=_positive_int, default=None,
                    help="input channels of a named model (default: the model's own: 1 for digits_cnn, else 3)")
    lt.add_argument("--num-classes", type=_positive_int, default=1000,
                    help="classifier outputs of a named model (default 1000)")
    _add_latency_target(lt, solver=False)
    lt.add_argument("--cache", default=None, help="table folder (default $PYPRUNE_CACHE/latency, or ~/.cache/pyprune/latency)")
    lt.add_argument("--verbose", action="store_true", help="every layer, not the 20 slowest")
    lt.set_defaults(func=cmd.latency_table)

    i = sub.add_parser("info", help="parameters, MACs and prunable channel groups of a model")
    i.add_argument("model", help="registry or torchvision model name, e.g. resnet50 or resnet56_cifar")
    i.add_argument("--size", type=_positive_int, default=None,
                   help="input side (default: the model's own: 8 for digits_cnn, 32 for the *_cifar models, else 224)")
    i.add_argument("--in-channels", type=_positive_int, default=None,
                   help="input channels (default: the model's own: 1 for digits_cnn, else 3)")
    i.add_argument("--num-classes", type=_positive_int, default=1000, help="classifier outputs (default 1000)")
    i.set_defaults(func=cmd.info)
    return p


def _load_config(path: str) -> dict:
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"config file {p} not found")
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        cfg = tomllib.loads(text)
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        cfg = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config {p}: use a .yaml, .yml or .toml file")
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: expected a mapping of options")
    return cfg


def _config_value(sub: argparse.ArgumentParser, key: str, value, path: str):
    """A config file's `value` for option `key`, read as its flag would be (type, choices,
    lists, switches), so a bad value stops ``run`` before any training, naming the file and
    the key. (argparse itself checks neither a default's choices nor a non-string default.)"""
    action = next(a for a in sub._actions if a.dest == key)
    flag = "/".join(action.option_strings) or key

    def bad(why: str):
        return ValueError(f"config {path}: {key}: {why} (the option {flag})")

    if action.nargs == 0:  # a switch: store_true / store_false
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {value!r}")
        return value
    many = action.nargs in ("+", "*")
    items = value if many and isinstance(value, list) else [value]
    if not many and isinstance(value, (list, dict)):
        raise bad(f"expected one value, got {value!r}")
    out = []
    for v in items:
        if isinstance(v, (list, dict)) or (isinstance(v, bool) and action.type is not None):
            raise bad(f"expected a single {getattr(action.type, '__name__', 'value').strip('_')}, got {v!r}")
        if action.type is not None:
            try:
                v = action.type(v if isinstance(v, str) else str(v))
            except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
                raise bad(str(e) if isinstance(e, argparse.ArgumentTypeError) else f"invalid value {v!r}") from None
        elif not isinstance(v, str):
            v = str(v)
        if action.choices is not None and v not in action.choices:
            raise bad(f"{v!r} is not one of {', '.join(map(str, action.choices))}")
        out.append(v)
    return out if many else out[0]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def parse(argv: list[str]) -> argparse.Namespace | None:
    """Parse `argv`. For ``run --config FILE`` the file's options become the parser's
    defaults first, so a flag given explicitly always wins over the file, and the file
    over the built-in defaults. Two budgets given at once (``--ratio`` and ``--target-macs``,
    say) are refused, naming both. Returns None after reporting a bad config file."""
    parser = build_parser()
    cfg: dict = {}
    known = argparse.Namespace(config=None)
    if argv and argv[0] == "run":
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(argv[1:])
        if known.config:
            run = _subparser(parser, "run")
            try:
                cfg = _load_config(known.config)
                options = {a.dest for a in run._actions} - {"help", "config"}
                bad = sorted(k for k in cfg if k not in options)
                if bad:
                    raise ValueError(f"config {known.config}: unknown option(s) {bad}; known: {sorted(options)}")
                # null: the option's default, as if the key were left out (and no budget either)
                cfg = {k: _config_value(run, k, v, known.config) for k, v in cfg.items() if v is not None}
            except ValueError as e:
                print(f"pyprune run: error: {e}", file=sys.stderr)
                return None
            run.set_defaults(**cfg)
    args = parser.parse_args(argv)
    if getattr(args, "seed", 0) is None:  # not given: 0, or (dataset_for) the checkpoint's
        args.seed, args.seed_given = 0, False
    if args.command in ("prune", "run", "sweep"):
        given = _given_on_command_line(argv)
        cfg_given = {k for k, v in cfg.items() if v is not None} if args.command == "run" else set()
        config = known.config if cfg_given else None
        if not _one_budget(_subparser(parser, args.command), args, given, cfg_given, config):
            return None
    return args


# the budgets one pruning takes, by command: each replaces the others, so two at once is an error
# (never silently one of them)
BUDGETS = {
    "prune": {"ratio": "--ratio", "target_macs": "--target-macs", "target_params": "--target-params",
              "max_macs": "--max-macs", "max_params": "--max-params", "target_latency_ms": "--target-latency",
              "target_speedup": "--target-speedup"},
    "sweep": {"ratios": "--ratios", "speedups": "--speedups"},
}
BUDGETS["run"] = BUDGETS["prune"]


def _given_on_command_line(argv: list[str]) -> set[str]:
    """The options (dests) the user wrote on the command line, whatever their values: the
    line parsed again by a parser whose every default is 'absent' (abbreviations and
    ``--flag=value`` included, as argparse reads them)."""
    probe = build_parser()
    for sub in [a for a in probe._actions if isinstance(a, argparse._SubParsersAction)][0].choices.values():
        for a in sub._actions:
            a.default = argparse.SUPPRESS
        sub._defaults.clear()
    return set(vars(probe.parse_args(argv))) - {"command"}


def _one_budget(sub: argparse.ArgumentParser, args: argparse.Namespace, given: set[str], cfg_given: set[str],
                config: str | None) -> bool:
    """At most one budget per source: two on the command line (or two in a config file) are an
    error naming both. A budget on the command line replaces the config file's (a flag given
    explicitly wins). Two on the command line exit through the subcommand's parser (status 2, with
    its usage); two in the config file are reported and give False, as other config errors."""
    flags = BUDGETS[args.command]
    on_line = [d for d in flags if d in given]
    in_cfg = [d for d in flags if d in cfg_given]
    if len(on_line) > 1:
        sub.error(f"{' and '.join(flags[d] for d in on_line)} are budgets that replace each other: give only one")
    if not on_line and len(in_cfg) > 1:
        print(f"pyprune run: error: config {config}: {' and '.join(d for d in in_cfg)} are budgets that replace each "
              "other: give only one", file=sys.stderr)
        return False
    for d in in_cfg:  # the config file's budgets give way to the one on the command line
        if on_line and d not in on_line and d != "ratio":  # (a ratio is only used where no budget is set)
            setattr(args, d, None)
    return True
