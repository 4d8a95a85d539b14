# Sourced by the other scripts: creates .venv if absent and keeps it in step with setup.cfg.
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
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
