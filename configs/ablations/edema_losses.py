"""Segmentation losses on Duke DME fluid (configs/edema.py): BCE, soft Dice, BCE + soft Dice.

Fluid covers ~1% of a B-scan's pixels, which is where the losses differ (BCE alone is pulled
towards the background). Same recipe, seed and data order for each; 300 steps, evaluated every
100 on the whole subject-5 B-scans; the best checkpoint's validation metrics are reported.

  python scripts/ablate.py --sweep=configs/ablations/edema_losses.py --root=runs/ablations/edema_losses
"""
from retina_jax import sweep

CONFIG = "configs/edema.py"
BASE_OVERRIDES = {"train.num_steps": 300, "train.eval_every": 100}
METRICS = ("dice", "iou", "auc_pr", "train_seconds")


def get_sweep() -> list[sweep.Point]:
    return sweep.axis("train.loss", ["bce", "dice", "bce_dice"])
