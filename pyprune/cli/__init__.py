"""The `pyprune` command line: ``pyprune <command> [options]`` (``pyprune --help``).

Layout: ``_parser`` builds the argument parser (a config file given to ``run`` becomes
the parser's defaults, so flags given explicitly always win), ``_commands`` holds one
function per command, and ``_workflow`` the steps commands share (prune -> fine-tune ->
evaluate, data and model set-up).

Exit codes: 0 success, 2 bad usage or input (a clear message on stderr), 1 unexpected failure,
130 interrupted (Ctrl-C; the message says how to resume).
"""
from __future__ import annotations

import sys

__all__ = ["main", "run"]


def run(argv: list[str]) -> int:
    from ._parser import parse

    args = parse(argv)
    if args is None:  # a config-file problem, already reported
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"pyprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (" Run the same command again to resume from the last finished epoch (the training state is "
                "saved after every epoch)." if args.command in ("train", "finetune", "run") else "")
        print(f"\npyprune {args.command}: interrupted; files already written are whole, nothing else was "
              f"changed.{hint}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)
