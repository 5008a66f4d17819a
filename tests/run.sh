#!/usr/bin/env bash
# The README's test command. Installs the package with its test extras (the CPU torch wheel first
# when no torch is installed, so pip never pulls a multi-GB CUDA build), checks the house rules
# with ruff (lint and formatting, configured in pyproject.toml), then runs the suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[test]"
python -m ruff check .
python -m ruff format --check .
exec python -m pytest -m "not gpu" "$@"
