#!/usr/bin/env bash
# Create .venv if missing and install sdlab with its test tools, the video extra (MP4) and the Ray extra
# (sdlab batch / serve --ray; about 615 MB) (idempotent, fast when done).
# CPU by default: torch is pinned to the local CPU build. GPU users: install the torch build
# for their CUDA into .venv first (see README), then run this script; it keeps that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.sdlab-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] \
   || ! .venv/bin/python -c "import sdlab, torch, diffusers, ray" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,video,ray]"
  touch "$stamp"
fi
