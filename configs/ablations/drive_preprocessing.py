"""Fundus preprocessing on DRIVE (configs/drive.py): which of retina-unet's steps matter.

  green + CLAHE + gamma   the config's default then (retina-unet's pipeline)
  green, no CLAHE/gamma   standardisation only
  luminance + CLAHE + gamma

Each is trained with the same recipe (width-8 U-Net, 64x64 patches inside the FOV, batch 32,
as the config had then) for 1000 steps, evaluated every 500 on the 4 validation images with
flip TTA; metrics inside the FOV.

  python scripts/ablate.py --sweep=configs/ablations/drive_preprocessing.py --root=runs/ablations/drive_preprocessing
"""
from retina_jax import sweep

CONFIG = "configs/drive.py"
BASE_OVERRIDES = {"model.features": 8, "augment.crop_size": (64, 64), "train.batch_size": 32,
                  "train.num_steps": 1000, "train.eval_every": 500}
METRICS = ("auc_roc", "best_f1", "auc_pr", "train_seconds")


def get_sweep() -> list[sweep.Point]:
    variants = sweep.zip_axes(sweep.axis("input.channel", ["green", "green", "luminance"]),
                              sweep.axis("input.clahe_clip", [2.0, 0.0, 2.0]),
                              sweep.axis("input.gamma", [1 / 1.2, 1.0, 1 / 1.2]))
    return variants
