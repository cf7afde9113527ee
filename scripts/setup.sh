#!/usr/bin/env bash
# Set up robust-abstain on a fresh Debian machine with Python 3.11: a venv with the package and its
# dependencies, the Fashion-MNIST idx files (Debian's dataset-fashion-mnist when we can install it),
# DVC with analytics off. Idempotent. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
     { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }) ||
      echo "note: dataset-fashion-mnist not installed; the prepare stage will try torchvision's download"
  else
    echo "note: run 'sudo apt-get install dataset-fashion-mnist' or set data.fashion_mnist.root"
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

# DVC needs a git repository; a fresh clone has one.
[ -d .git ] || { git init -q && git add -A && git commit -qm "initial" ; }
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
echo "setup done: $(.venv/bin/python -c 'import torch, robust_abstain; print("torch", torch.__version__)')"
