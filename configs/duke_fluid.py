"""Fluid-present classification of Duke DME B-scans with the seed's OctNET.

Label = the B-scan's fluid mask has any fluid pixel (`dataset.label_from_mask`), so OctNET and
the classification path run on real OCT here (Kermany's OCT2017 is not on these machines).
Split by subject as in the edema run: subjects 1-4 train (30 with fluid, 14 without),
subject 5 validation (10 with fluid, 1 without). B-scans are resized from 496x768 to 248x384
(half size, aspect kept); the loss weighs the two classes equally ("balanced").

Usage:
  python -m retina_jax.main --config=configs/duke_fluid.py --workdir=runs/duke_fluid
  python -m retina_jax.main --config=configs/duke_fluid.py:smoke --workdir=/tmp/duke_fluid_smoke
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.task = "classification"
    config.dataset.name = "duke_dme"
    config.dataset.label_from_mask = True
    config.dataset.shuffle_buffer = 64

    config.input.mean = 0.186        # subjects 1-4, grey / 255 (as configs/edema.py)
    config.input.std = 0.227
    config.input.resize = (248, 384)

    config.augment.hflip = True      # nasal/temporal mirror
    config.augment.vflip = False
    config.augment.rot90 = False
    config.augment.scale = 0.1       # zoom/shift: the whole B-scan stays in view, fluid included
    config.augment.shift = 0.05
    config.augment.brightness = 0.1
    config.augment.contrast = 0.1
    config.augment.speckle = 0.1

    config.model.name = "octnet"
    config.model.num_classes = 2
    config.classification.head = "softmax"
    config.classification.class_weights = "balanced"
    config.classification.label_smoothing = 0.05
    config.classification.class_names = ("no_fluid", "fluid")

    config.train.batch_size = 8
    config.train.num_steps = 300
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 30
    config.train.log_every = 25
    config.train.eval_every = 50
    config.checkpoint.best_metric = "balanced_accuracy"

    config.eval.batch_size = 8

    if arg == "smoke":
        default.apply_smoke(config)
        config.model.features = 4
        config.input.resize = (96, 128)
        config.eval.batch_size = 8
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; the only one is 'smoke'.")
    return config
