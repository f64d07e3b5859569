#!/usr/bin/env bash
# Creates .venv beside this repository and installs actionlab (editable) with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import actionlab, workloads, torch, ray, mlflow; print('actionlab installed in .venv (torch', torch.__version__, '/ ray', ray.__version__, '/ mlflow', mlflow.__version__ + ')')"
