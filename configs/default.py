"""Defaults every config starts from: the seed U-Net on the built-in 64x64 vessel set.

Usage: python -m retina_jax.main --config=configs/default.py --workdir=runs/default
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "segmentation"     # segmentation | classification (retina_jax/tasks/)
    # Compute dtype of the model: float32, or bfloat16 (mixed precision: parameters, optimizer
    # state, loss and metrics stay float32; activations and convolutions run in bfloat16).
    config.dtype = "float32"
    # CPU convolutions: "xla" (XLA's own) or "onednn" (oneDNN through a JAX FFI custom call: the
    # seed U-Net trains ~2x faster on CPU; built by scripts/build_onednn.sh, which scripts/test.sh
    # runs; without the build XLA's are used, with a warning), or "onednn_bf16" (oneDNN with
    # bfloat16 products accumulated in float32, as TPUs run float32 convolutions by default; the
    # model stays float32; on CPUs with bfloat16 instructions, else float32 oneDNN with a
    # warning). A bfloat16 `dtype` runs oneDNN's bfloat16 kernels under either oneDNN setting.
    # GPU/TPU always use XLA's native convolutions.
    config.conv = "onednn"
    # JAX's persistent compilation cache: a folder for compiled programs, reused by later runs
    # with the same shapes (resumes, evaluations); "" = off.
    config.compilation_cache_dir = ""

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "retina_vessels"
    config.dataset.manual_dir = ""   # raw data; "" = the builder's default (shipped copy)
    config.dataset.data_dir = ""     # prepared TFDS data; "" = <project>/tfds_data
    config.dataset.train_split = "train"
    config.dataset.validation_split = "validation"
    config.dataset.shuffle_buffer = 1024
    config.dataset.cache = True      # keep decoded examples in memory (small datasets)
    config.dataset.label_from_mask = False  # classification: label = the mask has any foreground
    # Preparing the data: a bad raw file (datasets/validate.py) fails naming it, or with True is
    # left out and listed in <data_dir>/<name>-<fingerprint>-skip_bad_files/skipped.csv.
    config.dataset.skip_bad_files = False
    # K-fold cross-validation (num_folds > 0): train_split and validation_split then read the
    # pool's folds instead (retina_jax/data/pipeline.py: select). The pool's distinct `group_by`
    # values, sorted, go round-robin into folds: examples that share a value (a subject's
    # B-scans) stay in one fold. One run trains one fold; configs/ablations/*_cv.py sweeps them.
    config.dataset.cross_validation = ml_collections.ConfigDict()
    config.dataset.cross_validation.num_folds = 0
    config.dataset.cross_validation.fold = 0
    config.dataset.cross_validation.pool = "train+validation"
    config.dataset.cross_validation.group_by = "id"

    config.input = ml_collections.ConfigDict()
    config.input.mean = 0.445        # image -> (image / 255 - mean) / std; train-split statistics
    config.input.std = 0.098
    config.input.denoise = "none"    # none | median3 (3x3 median, e.g. against OCT speckle)
    config.input.channel = "all"     # all | green | luminance (colour fundus: vessels contrast in green)
    config.input.clahe_clip = 0.0    # CLAHE clip limit (OpenCV's convention, e.g. 2.0); 0 = off
    config.input.clahe_grid = 8      # CLAHE tiles per side
    config.input.gamma = 1.0         # grey -> 255 * (grey / 255) ** gamma; 1 = off
    config.input.standardize = "dataset"  # dataset: with mean/std above; image: per image (over its FOV)
    config.input.resize = placeholder(tuple)  # (height, width) every image is resized to; None = as stored
    # > 0: the model sees every image resampled so that its field of view is this many pixels
    # across (the median FOV width of the split read; of each image in --mode=predict): training
    # crops are drawn at that scale, evaluation predicts at it and resizes the probabilities back
    # (metrics stay at the images' resolution). A model so trained sees any camera's vessels at
    # the widths it learned them. Datasets with FOV masks (drive, chase_db1); 0: off.
    config.input.fov_diameter = 0

    config.augment = ml_collections.ConfigDict()
    config.augment.hflip = True
    config.augment.vflip = True
    config.augment.rot90 = True
    config.augment.brightness = 0.1  # additive, in normalised units
    config.augment.contrast = 0.1    # multiplicative factor in [1 - c, 1 + c]
    config.augment.crop_size = placeholder(tuple)  # (height, width) training crops; None = whole image
    config.augment.positive_crop_fraction = 0.0    # share of crops centred near foreground
    config.augment.scale = 0.0       # zoom in [1/(1+s), 1+s] (log-uniform)
    config.augment.shift = 0.0       # translation up to this fraction of the crop size
    config.augment.speckle = 0.0     # multiplicative noise: intensity * (1 + N(0, speckle))
    config.augment.rotation = 0.0    # crops turned by up to this many degrees (either way)
    config.augment.elastic = 0.0     # smooth random displacements, std in crop pixels (0 = off)
    config.augment.elastic_spacing = 16  # pixels between the displacement field's control points
    config.augment.patches_per_image = 1  # crops of each image per epoch (patch training)

    # Fields left unset (None) take the model's own default, so `--config.model.name=X` works
    # for every registered model; a field that model does not accept is reported by name.
    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"        # see retina_jax.models.available()
    config.model.num_classes = 1
    config.model.features = placeholder(int)    # base width (unet: 16, the seed's)
    config.model.depth = placeholder(int)       # resolution levels (unet: 4)
    config.model.dropout = placeholder(float)   # unet: 0.05
    config.model.dropblock = placeholder(float)  # unet: 0 (off); the share of units DropBlock drops
    config.model.dropblock_size = placeholder(int)  # unet: 7, the side of DropBlock's squares
    config.model.batch_norm = placeholder(bool)
    config.model.upsample = placeholder(str)    # unet: "transpose" or "resize"
    config.model.side_heads = placeholder(bool)  # unet: logits of every decoder level, for deep supervision

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32     # global, over all devices and processes
    config.train.num_steps = 700    # ~10 minutes on a 2-core CPU
    config.train.optimizer = "adam"  # or "adamw"
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 50
    config.train.end_lr_factor = 0.0
    config.train.weight_decay = 0.0  # adamw only
    config.train.loss = "bce_dice"   # bce | dice | bce_dice | cldice | bce_dice_cldice (losses.LOSSES)
    # Mean loss over every head the model sows as side logits (unet: model.side_heads=True).
    config.train.deep_supervision = False
    config.train.log_every = 25
    config.train.eval_every = 100    # each evaluation also saves a checkpoint
    config.train.stop_at_step = 0    # >0: end this run there (resumable), e.g. for chained jobs
    # >0: train for at most this many minutes (train_seconds: the steps, not the validations).
    # At the end of warm-up, the last step whose learning rate does not depend on num_steps, the
    # run times its steps and shortens num_steps to what fits, so the cosine still ends at zero;
    # the count is recorded in checkpoints, config.json and metrics.json (retina_jax/train.py,
    # fit_time_budget).
    # 0 = off: exactly num_steps, whatever the host.
    config.train.time_budget_minutes = 0.0
    # Clip the gradients to this global L2 norm before the optimizer (optax.clip_by_global_norm);
    # 0 = off. A NaN/Inf loss or gradient stops training anyway (train.NonFiniteError), keeping
    # the last good checkpoint.
    config.train.grad_clip_norm = 0.0
    # Evaluate (and checkpoint-rank) exponential moving averages of the weights and batch-norm
    # statistics, updated every step with this decay (e.g. 0.999: about the last 1000 steps);
    # 0 = off, the trained weights themselves.
    config.train.ema_decay = 0.0

    # config.task = "classification" only (retina_jax/tasks/classification.py).
    config.classification = ml_collections.ConfigDict()
    config.classification.head = "softmax"     # softmax (num_classes logits) | regression (1 output)
    config.classification.class_weights = "none"  # none | balanced | K comma-separated numbers
    config.classification.label_smoothing = 0.0   # softmax head
    config.classification.class_names = placeholder(tuple)  # None = the dataset's label names

    config.eval = ml_collections.ConfigDict()
    config.eval.split = "validation"  # --mode=evaluate only
    config.eval.checkpoint = "best"   # best | latest
    config.eval.batch_size = 64
    config.eval.threshold = 0.5
    config.eval.num_bins = 1000       # probability histogram resolution for AUC
    config.eval.num_overlays = 8
    config.eval.tune_threshold = False    # also report metrics at the validation F1-best threshold
    config.eval.save_probabilities = False  # eval/<split>/probabilities/<id>.png

    # How evaluation turns whole images into probability maps (retina_jax/inference.py).
    config.inference = ml_collections.ConfigDict()
    config.inference.method = "whole"     # whole | sliding_window
    config.inference.tile_size = 256      # sliding_window: square tiles of this many pixels
    config.inference.overlap = 0.25       # sliding_window: fraction of a tile shared with the next
    config.inference.tile_batch = 4       # sliding_window: tiles per image per model call
    config.inference.flip_tta = False     # average over left-right / up-down mirror images
    config.inference.flip_views = 4       # flip_tta: 4 = itself and mirrored 3 ways; 2 = itself, left-right
    config.inference.transpose_tta = False  # ... and over the transposed image (with flips: 8 views)
    # The model sees images resized by this factor, its probabilities resized back (metrics stay
    # at the images' resolution): another camera's images at the training images' scale. A fixed
    # factor for this evaluation; config.input.fov_diameter chooses it from the images instead.
    config.inference.scale = 1.0
    # Multi-scale TTA: average the probabilities over the images resized by each of these factors
    # (relative to the scale above), e.g. (0.9, 1.0, 1.1) at 3x the model calls; () = 1.0 only.
    config.inference.scale_tta = ()

    # --mode=predict (retina_jax/predict.py): a folder of a user's images through the workdir's
    # best checkpoint, with training's preprocessing.
    config.predict = ml_collections.ConfigDict()
    config.predict.input_dir = ""         # folder of tif/tiff/gif/png/jpg/jpeg/bmp images (required)
    config.predict.output_dir = ""        # "" = <workdir>/predict; replaced as a whole, atomically
    config.predict.fov_dir = ""           # drive/chase_db1: FOV masks <stem>[_mask|_fov].<ext>; "" = estimated
    config.predict.skip_bad_files = False  # True: leave bad files out, listed in OUT/skipped.csv

    # --mode=gradcam (retina_jax/gradcam.py): writes workdir/gradcam/<split>/.
    config.gradcam = ml_collections.ConfigDict()
    config.gradcam.split = "validation"  # a split name
    config.gradcam.num_images = 16        # the split's first images
    config.gradcam.layer = "pre_logits"   # a module path, e.g. "encoder2" or "decoder0/conv1"
    config.gradcam.method = "gradcam"     # gradcam | gradcam_pp
    config.gradcam.target_class = -1      # class (segmentation: output channel) explained; -1 = predicted
    config.gradcam.seg_region = "predicted"  # segmentation target region: predicted | ground_truth mask
    config.gradcam.tensorboard = False    # also log the maps of validation images at each evaluation

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.best_metric = "dice"
    # Also save a checkpoint every this many steps, between evaluations (0 = at evaluations only):
    # a run killed without notice loses at most this many steps. Without metrics, such a
    # checkpoint only serves resuming; SIGTERM saves one at the step it arrives.
    config.checkpoint.every_steps = 0

    config.parallel = ml_collections.ConfigDict()
    config.parallel.num_devices = 0   # mesh size; 0 = every device of every process
    config.parallel.cpu_devices = 0   # JAX devices made of the host CPU; 0 = one per core
    # Multi-process runs (see README "Multi-host"). Unset, a srun / mpirun / GKE TPU launcher
    # is detected from its environment; "auto" leaves all three to JAX (TPU pod slice on GCE).
    config.parallel.coordinator_address = ""  # HOST:PORT of process 0; "" = unset
    config.parallel.num_processes = 0         # 0 = unset
    config.parallel.process_id = -1           # -1 = unset

    if arg == "smoke":
        apply_smoke(config)
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; the only one is 'smoke'.")
    return config


def apply_smoke(config: ml_collections.ConfigDict) -> None:
    """A tiny run that exercises every code path in seconds (with any segmentation model)."""
    config.model.features = 4
    config.train.batch_size = 8
    config.train.num_steps = 4
    config.train.warmup_steps = 1
    config.train.log_every = 2
    config.train.eval_every = 2
    config.eval.batch_size = 64
