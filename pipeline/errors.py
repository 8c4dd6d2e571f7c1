"""Expected failures (bad input, damaged files, a missing tool) and the command-line runner that turns them into
one ``error: ...`` line instead of a traceback.

Every expected error of the project subclasses :class:`PipelineError`; anything else is a bug and keeps its
traceback. ``CAPTIONER_DEBUG=1`` shows the traceback of expected errors too.
"""

from __future__ import annotations

import os
import sys


class PipelineError(Exception):
    """Base class of every expected failure; its message names the file, image id, URL or key at fault."""

    # h5py's finalisers can crash the interpreter after a failed store write: such errors leave with os._exit
    hard_exit = False

    def __str__(self) -> str:  # KeyError subclasses would otherwise print their message in quotes
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(PipelineError, ValueError):
    """A value, file or option given by the user is wrong."""


class MissingKeyError(PipelineError, KeyError):
    """An image id, key or entry the run needs is absent."""


def run_cleanly(function, args) -> int:
    """Run ``function(args)``; expected errors print ``error: ...`` and return 1 (CAPTIONER_DEBUG=1: tracebacks)."""
    try:
        result = function(args)
    except (PipelineError, FileNotFoundError) as error:
        if os.environ.get("CAPTIONER_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        if getattr(error, "hard_exit", False):
            sys.stderr.flush()
            os._exit(1)
        return 1
    return int(result or 0)
