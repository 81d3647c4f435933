#!/usr/bin/env bash
# One-GPU benchmark (bench/gpu.py): base and large at the lung crop, with and without DP
# on the fusion-and-heads scope; one table. Extra arguments go to bench/gpu.py, e.g.
# `bench/gpu.sh --preset tiny --device cpu --steps 2` to exercise it without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
exec timeout 470 "$PY" bench/gpu.py "$@"
