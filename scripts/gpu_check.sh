#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU: the whole template test suite (the CUDA
# smoke train, resume, evaluate and mixed precision run there instead of skipping).
# Wheels of the packages the machine lacks (cookiecutter and its dependencies, ruff, mlxtend)
# may be put in WHEELS (default .carry/wheels); they are
# installed from there without an index.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.carry/wheels}
OUT=${OUT:-build}
mkdir -p "$OUT"
nvidia-smi -L
python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'
if [ -d "$WHEELS" ]; then
    python -m pip install --quiet --no-index --find-links "$WHEELS" cookiecutter ruff
    python -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" mlxtend
fi
export PYTHONUNBUFFERED=1
python -m pytest tests -v -rA --durations=10 2>&1 | tee "$OUT/gpu-pytest.log"
