"""The DRIVE recipe (configs/drive.py, 64x64 patches, batch 32) one change at a time: loss,
patch size, dropout, elastic deformation.

  base           luminance, BCE + soft Dice, 64x64 patches, width 8, dropout 0.05
  loss=bce       BCE alone (ranks pixels for AUC-ROC; Dice pushes F1 at 0.5)
  crop 96x96     more context per patch (2.25x the pixels per step)
  dropout 0      no dropout
  elastic 2      smooth random displacements (std 2 pixels, control points 16 pixels apart)

(Width 16 was compared in full 6000-step runs instead: README, DRIVE.)

Each is trained for 1500 steps (its own cosine schedule), evaluated every 500 on the 4
validation images with flip TTA; metrics inside the FOV.

  python scripts/ablate.py --sweep=configs/ablations/drive_recipe.py --root=runs/ablations/drive_recipe
"""
from retina_jax import sweep

CONFIG = "configs/drive.py"
BASE_OVERRIDES = {"train.batch_size": 32, "train.num_steps": 1500, "train.eval_every": 500}
METRICS = ("auc_roc", "best_f1", "auc_pr", "train_seconds")


def get_sweep() -> list[sweep.Point]:
    return sweep.zip_axes(sweep.axis("train.loss", ["bce_dice", "bce", "bce_dice", "bce_dice", "bce_dice"]),
                          sweep.axis("augment.crop_size", [(64, 64), (64, 64), (96, 96), (64, 64), (64, 64)]),
                          sweep.axis("model.dropout", [0.05, 0.05, 0.05, 0.0, 0.05]),
                          sweep.axis("augment.elastic", [0.0, 0.0, 0.0, 0.0, 2.0]))
