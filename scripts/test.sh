#!/usr/bin/env bash
# Sets up .venv if needed, builds the optional oneDNN convolution kernels, then runs the whole
# test suite. Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` or
# `scripts/test.sh tests/test_metrics.py`.
source "$(dirname "$0")/env.sh"
if ! bash scripts/build_onednn.sh > .venv/onednn_build.log 2>&1; then
    echo "oneDNN kernels not built (see .venv/onednn_build.log): their tests will skip."
fi
python -m pytest "$@"
