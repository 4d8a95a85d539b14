#!/usr/bin/env bash
# Sets up .venv and the oneDNN convolution kernels if needed (scripts/env.sh), then runs the whole
# test suite. Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` or
# `scripts/test.sh tests/test_metrics.py`.
source "$(dirname "$0")/env.sh"
python -m pytest "$@"
