"""``python -m pipeline.gpu_slots --count K -- COMMAND ...``: run a GPU job on GPUs of its own.

Snakemake's ``gpu`` resource only counts: with ``--resources gpu=4`` four GPU jobs run at once, but nothing tells each
which card is its. This wrapper takes K free GPU ids (one lock file per id, ``flock``), sets ``CUDA_VISIBLE_DEVICES``
to them and replaces itself with the command (``exec``). The locks are held by the command's process: the kernel
frees them when it ends, however it ends (a crash, ``kill -9``), so a slot is never lost.

Which ids: ``CAPTIONER_GPUS`` (a comma list; tests fake a machine with it), else ``CUDA_VISIBLE_DEVICES`` where set,
else the GPUs ``nvidia-smi -L`` lists. With none (a CPU machine) or inside a SLURM job (SLURM gives each job its own
GPUs already), the command runs unchanged. Torch-free: it starts in milliseconds.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path


def gpu_ids(environ=os.environ) -> list[str]:
    """The GPU ids jobs may take on this machine (see the module docstring); [] when there are none."""
    for key in ("CAPTIONER_GPUS", "CUDA_VISIBLE_DEVICES"):
        if environ.get(key) is not None:
            return [i.strip() for i in environ[key].split(",") if i.strip() and i.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def lock_dir(environ=os.environ) -> Path:
    """One folder of lock files per user and machine (``CAPTIONER_GPU_LOCKS`` to choose another)."""
    return Path(environ.get("CAPTIONER_GPU_LOCKS") or f"/tmp/captioner-gpu-slots-{os.getuid()}")


def acquire(count: int, ids: list[str], folder: Path, poll_s: float = 0.5, timeout_s: float | None = None) -> list:
    """Open file descriptors holding ``count`` of the ids' locks (waiting while fewer are free); their ids are the
    lock files' names."""
    if count > len(ids):
        raise SystemExit(f"error: this job needs {count} GPUs and the machine has {len(ids)} ({','.join(ids)}); lower "
                         "train.gpus_per_job or --resources gpu")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    while True:
        held = []
        for gpu in ids:
            handle = open(folder / f"gpu{gpu}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((gpu, handle))
            if len(held) == count:
                return held
        for _, handle in held:  # too few free (a job outside Snakemake's count holds some): all or none
            handle.close()
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise SystemExit(f"error: no {count} free GPU(s) among {','.join(ids)} after {timeout_s:.0f} s "
                             f"(locks in {folder})")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.gpu_slots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1, help="GPUs the job uses (its `gpu` resource)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (after --)")
    ids = [] if os.environ.get("SLURM_JOB_ID") else gpu_ids()
    if args.count > 0 and ids:
        held = acquire(args.count, ids, lock_dir())
        for _, handle in held:
            os.set_inheritable(handle.fileno(), True)  # the command's process keeps holding the locks
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu for gpu, _ in held)
        print(f"gpu_slots: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
