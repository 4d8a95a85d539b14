"""OCT disease classification (CNV / DME / DRUSEN / NORMAL) with the seed's OctNET on a user's
copy of Kermany et al.'s OCT2017 (`train|test/{CNV,DME,DRUSEN,NORMAL}/*.jpeg`; not on these
machines, so there is no built-in default).

The classes are imbalanced (train: CNV 37,205, DME 11,348, DRUSEN 8,616, NORMAL 26,315), so
the cross-entropy weighs each class by n / (4 n_k) ("balanced", counted on the train split), as
the seed notebook weighted its loss; validation = ~10% of the train patients (a patient's scans
never straddle the two), test = the official 968 images.

Usage:
  python -m retina_jax.main --config=configs/oct_classification.py --workdir=runs/oct2017 \
      --config.dataset.manual_dir=/data/OCT2017
  python -m retina_jax.main --config=configs/oct_classification.py --workdir=runs/oct2017 \
      --config.dataset.manual_dir=/data/OCT2017 --mode=evaluate --config.eval.split=test
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.task = "classification"
    config.dataset.name = "oct2017"
    config.dataset.shuffle_buffer = 4096
    config.dataset.cache = False     # 83k B-scans: read from the prepared TFRecords each epoch

    config.input.mean = 0.19         # OCT B-scans are mostly dark (Duke's train split: 0.186)
    config.input.std = 0.22

    config.augment.hflip = True
    config.augment.vflip = False
    config.augment.rot90 = False
    config.augment.scale = 0.1
    config.augment.shift = 0.05
    config.augment.brightness = 0.1
    config.augment.contrast = 0.1
    config.augment.speckle = 0.1

    config.model.name = "octnet"
    config.model.num_classes = 4
    config.classification.head = "softmax"
    config.classification.class_weights = "balanced"
    config.classification.label_smoothing = 0.05

    config.train.batch_size = 64
    config.train.num_steps = 20_000  # ~15 epochs of 83,484 B-scans: a GPU job
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 500
    config.train.log_every = 100
    config.train.eval_every = 2000
    config.checkpoint.best_metric = "balanced_accuracy"

    config.eval.batch_size = 128

    if arg == "smoke":
        default.apply_smoke(config)
        config.model.features = 4
        config.input.resize = (64, 64)
        config.eval.batch_size = 8
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; the only one is 'smoke'.")
    return config
