"""Command lines made of lazily imported subcommands: ``python -m PACKAGE COMMAND ...`` for what people type, and
``python -m PACKAGE job NAME --spec JSON ...`` for what the workflow's rules run (one typed spec per job, see
:mod:`pipeline.spec`).

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

JOB = "job"  # the group of the rules' jobs


def _listing(commands: dict[str, tuple[str, str]], prefix: str = "") -> str:
    return "\n".join(f"  {prefix + name:<22} {text}" for name, (_, text) in commands.items())


def main(prog: str, description: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None,
         jobs: dict[str, tuple[str, str]] | None = None) -> int:
    """``commands`` and ``jobs`` (the workflow's, under ``job``): name -> (module, one-line help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs = jobs or {}
    if argv[:1] == [JOB] and jobs:
        return main(f"{prog} {JOB}", "the workflow's jobs: each reads its settings from --spec", jobs, argv[1:])
    if not argv or argv[0] not in commands:
        epilog = "commands:\n" + _listing(commands)
        if jobs:
            epilog += f"\n\nthe workflow's jobs ({prog} {JOB} NAME --spec JSON ...):\n" + _listing(jobs, f"{JOB} ")
        parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("command", choices=list(commands) + ([JOB] if jobs else []), metavar="COMMAND")
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
