#!/usr/bin/env bash
# Builds the optional oneDNN convolution kernels for XLA:CPU (retina_jax/ops/onednn_conv.py):
#   scripts/build_onednn.sh            # uses .venv (created by scripts/test.sh / demo.sh) or the active venv
# Installs oneDNN from PyPI into the venv if absent, then compiles retina_jax/ops/_build/libretina_onednn_conv.so
# in the retina_jax that venv imports: the repository for an editable install (scripts/env.sh's), the
# installed copy for `pip install .` (a wheel carries no kernels), else the repository.
# PyPI's `onednn-devel-cpu-gomp` (oneDNN 3.2, GNU OpenMP, CPU only) is used: the newer `onednn`
# 2026.x wheels are SYCL builds that need the Intel DPC++/TBB runtimes (hundreds of MB).
# Needs a C++17 compiler (g++) and libgomp. Without the .so the code uses XLA's own convolutions.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
ONEDNN_VERSION="${ONEDNN_VERSION:-2023.2.0}"
if [[ ! -f "$PREFIX/include/oneapi/dnnl/dnnl.hpp" || ! -e "$PREFIX/lib/libdnnl.so" ]]; then
  "$PY" -m pip install "onednn-devel-cpu-gomp==$ONEDNN_VERSION"
fi
JAX_INC="$("$PY" -c 'import jax; print(jax.ffi.include_dir())')"
# -I: the installed package, not the repository the current directory would put first on sys.path.
PACKAGE="$("$PY" -I -c 'import pathlib, retina_jax.ops; print(pathlib.Path(retina_jax.ops.__file__).parent)' \
  2>/dev/null || echo "$ROOT/retina_jax/ops")"
OUT="$PACKAGE/_build"
mkdir -p "$OUT"
"${CXX:-g++}" -O2 -std=c++17 -w -shared -fPIC -fopenmp \
  -I"$JAX_INC" -I"$PREFIX/include" \
  retina_jax/ops/csrc/onednn_conv.cc -o "$OUT/libretina_onednn_conv.so.tmp" \
  -L"$PREFIX/lib" -ldnnl -Wl,-rpath,"$PREFIX/lib"
mv "$OUT/libretina_onednn_conv.so.tmp" "$OUT/libretina_onednn_conv.so"
echo "built $OUT/libretina_onednn_conv.so (oneDNN from $PREFIX/lib)"
