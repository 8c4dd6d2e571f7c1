"""Command lines made of lazily imported subcommands: ``python -m PACKAGE COMMAND ...``.

Each command lives in its own module with ``add_arguments(parser)`` and ``run(args)``; only the module of the
command being run is imported. So a rule's code fingerprint (:mod:`pipeline.provenance`) names that module alone,
and ``--help`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline import usage
from pipeline.errors import run_cleanly


def main(prog: str, description: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    """``commands``: name -> (module, one-line help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        parser = argparse.ArgumentParser(prog=prog, description=description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter,
                                         epilog="commands:\n" + "\n".join(f"  {name:<16} {text}" for name, (_, text)
                                                                          in commands.items()))
        parser.add_argument("command", choices=list(commands), metavar="COMMAND")
        parser.parse_args(argv[:1])  # prints the help, or names the unknown command, and exits
        return 2
    module_name, text = commands[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"{prog} {argv[0]}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return run_cleanly(module.run, args)
    finally:
        usage.report()  # the job's peak memory and CPU time, for tables/costs.md (only where the workflow asks)
