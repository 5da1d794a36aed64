#!/usr/bin/env bash
# The GPU check: environment, `pytest -m gpu`, training-step and MAS figures -> one JSON and a printed table.
#   bash bench/gpu_check.sh [--out gpu_check.json] [--batch-sizes 8 16] [--skip-tests] ...
# Exit 0: every check passed; 1: a check failed (named in the output and the JSON); 2: no CUDA device.
# Options and the checks are described in bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1  # every line reaches the log at once, even if the run is cut short
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
