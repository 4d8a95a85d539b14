# Sourced by the other scripts: creates .venv if absent, keeps it in step with setup.cfg and
# builds the oneDNN convolution kernels.
# RETINA_JAX_EXTRAS picks the pip extras to install (default: test; e.g. "test,gpu").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_BIN=${PYTHON_BIN:-$(command -v python3.11 || command -v python3)}
extras=${RETINA_JAX_EXTRAS:-test}
stamp=.venv/.installed-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)-${extras//,/_}
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
    echo "Installing retina_jax[$extras] into .venv (first run: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# XLA's own CPU convolutions train at about half the speed of the oneDNN kernels (README, Speed),
# so every entry point builds them when they are absent or older than their source or the
# install; if the build fails, XLA's are used and the kernels' tests skip.
onednn_lib=retina_jax/ops/_build/libretina_onednn_conv.so
if [ ! -f "$onednn_lib" ] || [ retina_jax/ops/csrc/onednn_conv.cc -nt "$onednn_lib" ] \
        || [ "$stamp" -nt "$onednn_lib" ]; then
    if ! bash scripts/build_onednn.sh > .venv/onednn_build.log 2>&1; then
        echo "oneDNN kernels not built (see .venv/onednn_build.log): XLA's convolutions will be used."
    fi
fi
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
