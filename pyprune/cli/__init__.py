"""The `pyprune` command line: ``pyprune <command> [options]`` (``pyprune --help``).

Layout: ``_parser`` builds the argument parser (a config file given to ``run`` becomes
the parser's defaults, so flags given explicitly always win), ``_commands`` holds one
function per command, and ``_workflow`` the steps commands share (prune -> fine-tune ->
evaluate, data and model set-up).

Exit codes: 0 success, 2 bad usage or input (a clear message on stderr), 1 unexpected failure,
130 interrupted (Ctrl-C; the message says how to resume).
"""
from __future__ import annotations

import os
import sys
import warnings

__all__ = ["main", "run"]


def _warnings_as_messages(command: str):
    """A `warnings.showwarning` that prints pyprune's own warnings as the command's messages
    (``pyprune prune: warning: ...``, not ``<frozen runpy>:88: UserWarning: pyprune: ...``)
    and leaves every other warning to Python's display."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text.startswith("pyprune: "):
            print(f"pyprune {command}: warning: {text[len('pyprune: '):]}", file=sys.stderr if file is None else file)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def run(argv: list[str]) -> int:
    from ._parser import parse

    args = parse(argv)
    if args is None:  # a config-file problem, already reported
        return 2
    with warnings.catch_warnings():
        # pyprune's warnings are the command's messages: always shown (once per place), whatever
        # the interpreter's filters say
        warnings.filterwarnings("default", message="pyprune: ")
        warnings.showwarning = _warnings_as_messages(args.command)
        return _run(args)


def _run(args) -> int:
    from ..export import ExportError

    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError, ExportError) as e:
        print(f"pyprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's or a runtime's: often an input the model does not take
        if os.environ.get("PYPRUNE_DEBUG"):
            raise
        print(f"pyprune {args.command}: error: {e}\n(a RuntimeError from torch or a runtime: check that the "
              "model, its input size (--size, --shape) and the data agree; PYPRUNE_DEBUG=1 shows where it was "
              "raised)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = (" Run the same command again to resume from the last finished epoch (the training state is "
                "saved after every epoch)." if args.command in ("train", "finetune") else "")
        print(f"\npyprune {args.command}: interrupted; files already written are whole, nothing else was "
              f"changed.{hint}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)
