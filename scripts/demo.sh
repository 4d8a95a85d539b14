#!/usr/bin/env bash
# Sets up .venv if needed, trains the vessel config on the built-in data, evaluates the best
# checkpoint on the validation split, and prints where the report is.
# Usage: scripts/demo.sh [WORKDIR] [--config.key=value ...]   (WORKDIR defaults to runs/vessels)
source "$(dirname "$0")/env.sh"
workdir=${1:-runs/vessels}
shift $(( $# > 0 ? 1 : 0 ))
python -m retina_jax.main --config=configs/vessels.py --workdir="$workdir" "$@"
python -m retina_jax.main --config=configs/vessels.py --workdir="$workdir" --mode=evaluate \
    --config.eval.split=validation "$@"
echo
echo "Training metrics:   $workdir/metrics.json"
echo "Evaluation report:  $workdir/eval/validation/metrics.json and overlays.png"
echo "TensorBoard:        tensorboard --logdir $workdir"
