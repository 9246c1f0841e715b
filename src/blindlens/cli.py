"""The ``blindlens`` command line.

Each subcommand is registered by an ``_add_<name>`` function and run by a ``_run_<name>``
function; heavy imports happen inside the run functions so ``blindlens --help`` stays fast.
This is the only module that does console and file I/O on behalf of users; nothing imports it.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


# --- subcommands ----------------------------------------------------------------------------
# (each helper adds its own _add_/_run_ pair below and one line in _REGISTRY)


_REGISTRY: list = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindlens",
        description="Blind strong-lens inversion with a score-based diffusion source prior.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _REGISTRY:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"blindlens {args.command}: error: {err}", file=sys.stderr)
        return 2
