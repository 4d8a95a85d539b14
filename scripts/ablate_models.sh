#!/usr/bin/env bash
# The model ablation of the README: trains every registered segmentation model on the built-in
# vessel set with the same config and budget (configs/vessels.py), one after another, then prints
# the README table rows. Extra arguments go to every run (e.g. --config.train.num_steps=300).
# Usage: scripts/ablate_models.sh [ROOT] [--config.k=v ...]   (ROOT defaults to runs/ablation)
source "$(dirname "$0")/env.sh"
root=${1:-runs/ablation}
shift $(( $# > 0 ? 1 : 0 ))
names=$(python -c "from retina_jax import models
print(' '.join(n for n in models.available() if models.info(n).task == 'segmentation'))")
for name in $names; do
    python -m retina_jax.main --config=configs/vessels.py --workdir="$root/$name" \
        --config.model.name="$name" "$@"
done
python - "$root" $names <<'PY'
import json, sys
from pathlib import Path
root, names = Path(sys.argv[1]), sys.argv[2:]
print("| model | validation Dice | IoU | AUC-ROC | steps | train seconds |")
print("|---|---|---|---|---|---|")
for name in names:
    m = json.loads((root / name / "metrics.json").read_text())
    print(f"| `{name}` | {m['dice']:.4f} | {m['iou']:.4f} | {m['auc_roc']:.4f} | {m['step']} | {m['train_seconds']:.0f} |")
PY
