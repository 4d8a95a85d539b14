"""Diabetic-retinopathy grading (ICDR 0-4) on IDRiD with DRNet.

Images arrive from the `idrid_grading` builder already through the seed's grading
preprocessing (retina cropped, common radius, local average colour subtracted so the
background is 50% grey, rim removed, 512x512); here they are resized to 256x256 to fit the
2-core CPU budget. The head is a single regression output (the grade as a number, squared
error), turned into grades by thresholds tuned for quadratic weighted kappa on the validation
split (83 of the 413 training photos, stratified by grade); the checkpoint with the best
validation QWK is kept. `:resnet` trains the ResNet-18 baseline with the same recipe.

Usage:
  python -m retina_jax.main --config=configs/dr_grading.py --workdir=runs/dr_grading
  python -m retina_jax.main --config=configs/dr_grading.py:resnet --workdir=runs/dr_resnet18
  python -m retina_jax.main --config=configs/dr_grading.py --workdir=runs/dr_grading \
      --mode=evaluate --config.dataset.manual_dir=/data/idrid_grading --config.eval.split=test
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.task = "classification"
    config.dataset.name = "idrid_grading"
    config.dataset.shuffle_buffer = 512

    config.input.mean = 0.503        # train split after the grading preprocessing (grey = 0.5)
    config.input.std = 0.064
    config.input.resize = (256, 256)

    config.augment.hflip = True      # a fundus photo mirrored or turned is still a fundus photo
    config.augment.vflip = True
    config.augment.rot90 = True
    config.augment.scale = 0.1
    config.augment.brightness = 0.2
    config.augment.contrast = 0.2

    config.model.name = "dr_net"
    config.model.features = 16       # half DRNet's 32: a quarter of the compute
    config.model.num_classes = 1
    config.classification.head = "regression"
    config.classification.class_weights = "none"
    config.classification.class_names = ("0", "1", "2", "3", "4")

    config.train.batch_size = 16
    config.train.num_steps = 1000
    config.train.optimizer = "adamw"
    config.train.learning_rate = 1e-3
    config.train.weight_decay = 1e-4
    config.train.warmup_steps = 50
    config.train.log_every = 25
    config.train.eval_every = 100
    config.checkpoint.best_metric = "qwk"

    config.eval.batch_size = 16

    if arg == "resnet":
        config.model.name = "resnet18"
        config.model.features = 32  # half width (torchvision's 64): the same compute class as DRNet above
    elif arg == "smoke":
        default.apply_smoke(config)
        config.input.resize = (64, 64)
        config.model.features = 4
        config.eval.batch_size = 8
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; 'resnet' or 'smoke'.")
    return config
