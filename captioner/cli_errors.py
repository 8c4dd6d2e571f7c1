"""Turn expected failures (bad input, bad files) into one clear line instead of a traceback."""

from __future__ import annotations

import os
import sys


def expected_errors() -> tuple[type[BaseException], ...]:
    from captioner.karpathy import KarpathyFormatError
    from features.store import StoreError

    errors: list[type[BaseException]] = [KarpathyFormatError, StoreError, KeyError, FileNotFoundError, ValueError]
    from captioner.scoring import JavaMissingError

    errors.append(JavaMissingError)
    try:
        from features.images import ImageError

        errors.append(ImageError)
    except ImportError:  # torch missing: the image module cannot be imported, nor raise
        pass
    try:
        from captioner.checkpoint import CheckpointError

        errors.append(CheckpointError)
        from captioner.training import TrainingError

        errors.append(TrainingError)
    except ImportError:
        pass
    return tuple(errors)


def run_cleanly(function, args) -> int:
    """Run ``function(args)``; expected errors print ``error: ...`` and exit 1 (CAPTIONER_DEBUG=1: tracebacks)."""
    try:
        result = function(args)
    except expected_errors() as error:
        if os.environ.get("CAPTIONER_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        from features.store import StoreWriteError

        if isinstance(error, StoreWriteError):  # h5py's finalisers crash on a store whose write failed
            sys.stderr.flush()
            os._exit(1)
        return 1
    return int(result or 0)
