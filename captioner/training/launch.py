"""``python -m captioner.training.launch [torchrun options] -m captioner job train ...``: torchrun for multi-GPU training
jobs, made safe for a scheduler's stop signals.

SLURM (the warning before a time limit, a preemption, ``scancel --signal``) and a terminal send SIGTERM or SIGUSR1 to
every process of the job, the workers included: each one finishes its step, rank 0 writes ``last.pt`` and they exit
with the trainer's EXIT_INTERRUPTED. Plain torchrun would (a) die of SIGUSR1, which it does not handle, ending the
job before the workers have saved, and (b) answer SIGTERM by sending the workers a SIGTERM of its own: a second
signal, on which the trainer exits at once. So here torchrun's agent ignores both signals and leaves the stopping
to the workers. When a worker exited with EXIT_INTERRUPTED (it does so only once last.pt is on disk) and the others
with that too or of the agent's clean-up signals, the launcher exits EXIT_INTERRUPTED as well (torchrun itself would
report a plain failure): "interrupted, rerun to continue".
"""

from __future__ import annotations

import signal
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from captioner.training.preemption import EXIT_INTERRUPTED, STOP_SIGNALS

# torchrun's own handlers (they raise in the agent, which then signals the workers); SIGTERM is left out
AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def main(argv: list[str] | None = None) -> int:
    for name in STOP_SIGNALS:
        # SIG_IGN is inherited by the workers until the trainer installs its handlers (a signal before that is
        # lost; SLURM's kill follows anyway)
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    argv = sys.argv[1:] if argv is None else argv
    try:
        torchrun.main(["--signals-to-handle", AGENT_SIGNALS, *argv])
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        # a worker exits 75 only once rank 0's last.pt is on disk; the agent then stops the others with SIGTERM
        # (SIGKILL after a while), which can land while they exit, past the trainer's handlers
        if EXIT_INTERRUPTED in codes and codes <= {EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGKILL}:
            print(f"every worker stopped after last.pt was written (exit {EXIT_INTERRUPTED}): rerun to continue",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
