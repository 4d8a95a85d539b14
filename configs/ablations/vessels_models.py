"""Segmentation models on the built-in 64x64 seed vessel set, two seeds each, equal budget.

Every model trains with configs/vessels.py's recipe (BCE + soft Dice, flips / 90-degree turns /
intensity jitter, Adam 3e-3 with warm-up and cosine decay, batch 32) for 200 steps (~12
epochs), evaluated every 100; ResUNet is narrowed to the U-Net's base width 16 (its paper
width 64 costs 5.8 GFLOPs per patch, beyond this CPU's budget for a sweep).

  python scripts/ablate.py --sweep=configs/ablations/vessels_models.py --root=runs/ablations/vessels_models
"""
from retina_jax import sweep

CONFIG = "configs/vessels.py"
BASE_OVERRIDES = {"train.num_steps": 200, "train.eval_every": 100}
METRICS = ("dice", "iou", "auc_roc", "train_seconds")


def get_sweep() -> list[sweep.Point]:
    models = sweep.zip_axes(sweep.axis("model.name", ["unet", "unet_plus_plus", "resunet", "hourglass"]),
                            sweep.axis("model.features", [16, 16, 16, 4]))
    return sweep.product(models, sweep.axis("seed", [0, 1]))
