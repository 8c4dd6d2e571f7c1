#!/usr/bin/env bash
# The one-shot GPU check: run it at once on any GPU machine (<= 8 minutes on one GPU, no downloads).
# Rows go to benchmarks/RESULTS.md; extra arguments pass to gpu_check.py (e.g. --detector-weights PATH).
# It needs torch, torchvision, numpy, pillow, h5py, pyyaml and tqdm: the project's venv, or a machine image
# that has them (PYTHON=python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "note: no nvidia-smi"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
# the budget is 8 minutes; stop at 9 rather than run on (a partial check appends nothing)
timeout 540 "$python" benchmarks/gpu_check.py "$@"
