"""The training loop: state, pure jitted steps over a device mesh, evaluation, checkpoints, logs.

Usage:
  from retina_jax import train
  final_metrics = train.train_and_evaluate(config, workdir)   # resumes from workdir if it can
  metrics = train.evaluate(config, workdir)                    # best checkpoint, config.eval.split
Training ends by evaluating its best checkpoint on the validation split into workdir/eval/.

Everything random is derived from (config.seed, step): dropout from `fold_in(key, step)`, the
data order and augmentation from the pipeline's (seed, step) contract, and the learning rate
from the step. A resumed run therefore continues exactly as an uninterrupted run would.
"""
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from retina_jax import (checkpoint, datasets, gradcam, inference, io_utils, losses, metrics, models,
                        parallel, run_config, viz)
from retina_jax.data import pipeline
from retina_jax.ops import onednn_conv
from retina_jax.tasks import classification, segmentation

TASKS = ("segmentation", "classification")


class TrainState(flax.struct.PyTreeNode):
    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    # With config.train.ema_decay > 0: exponential moving averages of `params` and
    # `batch_stats` ({"params", "batch_stats"}), which evaluation uses; None otherwise.
    # Checkpoints written before this field existed restore (checkpoint.restore_target).
    ema: Any = None


def evaluation_variables(state: TrainState) -> dict:
    """The variables that evaluation, prediction and Grad-CAM apply the model with: the moving
    averages when the run keeps them, else the trained parameters and batch statistics."""
    if state.ema is not None:
        return state.ema
    return {"params": state.params, "batch_stats": state.batch_stats}


def ema_decay_at(decay: float, step: jnp.ndarray) -> jnp.ndarray:
    """The averaging weight of the old average at `step`: `decay`, but at most
    (1 + step) / (10 + step) (tf.train.ExponentialMovingAverage's num_updates rule), so the
    early average is not held back by the random initialisation."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to `learning_rate`, then cosine decay to `learning_rate * end_lr_factor`."""
    train = config.train
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train.learning_rate,
        warmup_steps=train.warmup_steps, decay_steps=max(train.num_steps, train.warmup_steps + 1),
        end_value=train.learning_rate * train.end_lr_factor)


def schedule_free_steps(config: ml_collections.ConfigDict) -> int:
    """The steps whose updates do not depend on `config.train.num_steps`: the warm-up, and the
    step after it (the cosine starts at its peak whatever its length). A time budget fixes
    num_steps after them (`budgeted_num_steps`)."""
    return config.train.warmup_steps + 1


def budgeted_num_steps(budget_seconds: float, spent_seconds: float, step: int,
                       step_seconds: float, max_steps: int) -> int:
    """The last step a run can reach in `budget_seconds` of training, having reached `step` in
    `spent_seconds` and taking `step_seconds` for each further step: at most `max_steps` (the
    config's), and not below `step`, where it stands."""
    affordable = int((budget_seconds - spent_seconds) // step_seconds)
    return min(max_steps, step + max(affordable, 0))


def check_time_budget(config: ml_collections.ConfigDict) -> None:
    train = config.train
    if train.time_budget_minutes < 0:
        raise ValueError(f"config.train.time_budget_minutes must be >= 0 (0 = off), got "
                         f"{train.time_budget_minutes}.")
    if train.time_budget_minutes > 0 and train.warmup_steps < 1:
        raise ValueError("config.train.time_budget_minutes > 0 times the warm-up steps to fit "
                         "num_steps, so config.train.warmup_steps must be >= 1, got "
                         f"{train.warmup_steps}.")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """`config.train.optimizer` on the learning-rate schedule, after clipping the gradients to
    the global norm `config.train.grad_clip_norm` (0: no clipping, and the bare optimizer)."""
    train = config.train
    schedule = learning_rate_schedule(config)
    if train.optimizer == "adam":
        optimizer = optax.adam(schedule)
    elif train.optimizer == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=train.weight_decay)
    else:
        raise ValueError(f"config.train.optimizer must be 'adam' or 'adamw', got {train.optimizer!r}.")
    if train.grad_clip_norm < 0:
        raise ValueError(f"config.train.grad_clip_norm must be >= 0 (0 = off), got {train.grad_clip_norm}.")
    if train.grad_clip_norm == 0:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), optimizer)


def optimizer_record(config: ml_collections.ConfigDict) -> dict:
    """What fixes the structure of the optimizer state and of the moving averages (not their
    hyperparameters' values), JSON-ready: a checkpoint resumes only under the same record."""
    if config.train.ema_decay < 0 or config.train.ema_decay >= 1:
        raise ValueError(f"config.train.ema_decay must be in [0, 1) (0 = off), got {config.train.ema_decay}.")
    record = {"optimizer": config.train.optimizer, "grad_clip": config.train.grad_clip_norm > 0}
    # Only when on: records written before EMA existed stay equal to those of runs without it.
    return {**record, "ema": True} if config.train.ema_decay > 0 else record


def data_record(config: ml_collections.ConfigDict) -> dict:
    """Which examples a run trains and validates on, JSON-ready: its splits and, with
    cross-validation on, the fold. Resuming, or evaluating on the same dataset, needs the same
    record: another one would train on, or choose checkpoints and thresholds on, other images."""
    record = {"train_split": config.dataset.train_split,
              "validation_split": config.dataset.validation_split}
    folds = config.dataset.cross_validation
    if folds.num_folds:
        record["cross_validation"] = {"num_folds": folds.num_folds, "fold": folds.fold,
                                      "pool": folds.pool, "group_by": folds.group_by}
    return record


COMPUTE_DTYPES = ("float32", "bfloat16")


def build_model(config: ml_collections.ConfigDict):
    """The registered model `config.model.name` computing in `config.dtype`, its convolutions
    traced as `config.conv` says (retina_jax/ops/onednn_conv.py); unset (None) model fields keep
    the model's default."""
    if config.dtype not in COMPUTE_DTYPES:
        raise ValueError(f"config.dtype must be one of {COMPUTE_DTYPES}, got {config.dtype!r}.")
    model_kwargs = {key: value for key, value in config.model.items()
                    if key != "name" and value is not None}
    model = models.get_model(config.model.name, dtype=jnp.dtype(config.dtype), **model_kwargs)
    return onednn_conv.with_conv(model, config.conv)


def model_record(name: str, model) -> dict:
    """The resolved architecture (registry name + every constructor field), JSON-ready.

    Checkpoints store it so that a workdir refuses to resume a different architecture, while an
    unset config field and its explicit default value count as the same model.
    """
    return _json_ready({"name": name, **{field.name: getattr(model, field.name)
                                         for field in _constructor_fields(model)}})


def model_defaults(model) -> dict:
    """The model class's field defaults, JSON-ready as in `model_record`."""
    return _json_ready({field.name: field.default for field in _constructor_fields(model)
                        if field.default is not dataclasses.MISSING})


def _constructor_fields(model) -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(model) if field.name not in ("parent", "name")]


def _json_ready(values: dict) -> dict:
    return json.loads(json.dumps(values, default=_json_name))


def _json_name(value) -> str:
    try:
        return np.dtype(value).name
    except TypeError:
        return str(value)


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], *, ema: bool = False) -> TrainState:
    """The initial state; with `ema`, moving averages that start at the initial variables."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params),
                      ema={"params": params, "batch_stats": batch_stats} if ema else None)


def segmentation_loss(name: str) -> Callable:
    """The batch loss `(logits, batch) -> scalar` of the segmentation loss `name` (losses.LOSSES)."""
    return functools.partial(segmentation.loss, losses.get_loss(name))


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               batch_loss: Callable, dropout_key: jax.Array,
               deep_supervision: bool = False, ema_decay: float = 0.0) -> tuple[TrainState, dict]:
    """One optimizer step on a (globally sharded) batch; pure, so jit can donate `state`.

    `batch_loss(outputs, batch)` is the task's loss (`segmentation_loss`, `classification.loss`).
    With `deep_supervision` the loss is its mean over every head the model sows as
    ("intermediates", "side_logits") (e.g. unet with side_heads=True), not over the output only.
    A state with moving averages (`state.ema`) moves them towards the new parameters and batch
    statistics by `ema_decay_at(ema_decay, step)`.
    """
    step_key = jax.random.fold_in(dropout_key, state.step)

    def compute_loss(params):
        mutable = ["batch_stats", "intermediates"] if deep_supervision else ["batch_stats"]
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      batch["image"], train=True, rngs={"dropout": step_key},
                                      mutable=mutable)
        if deep_supervision:
            loss = jnp.mean(jnp.stack([batch_loss(side, batch) for side in side_logits(updates, model)]))
        else:
            loss = batch_loss(logits, batch)
        return loss, updates.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
        decay = ema_decay_at(ema_decay, state.step)
        ema = jax.tree.map(lambda average, new: decay * average + (1 - decay) * new,
                           ema, {"params": params, "batch_stats": batch_stats})
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state, ema=ema)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}  # before any clipping


def side_logits(variables: dict, model) -> tuple:
    """The heads' logits a model sowed as ("intermediates", "side_logits"), in sowing order."""
    sides = variables.get("intermediates", {}).get("side_logits")
    if not sides:
        raise ValueError(f"config.train.deep_supervision needs a model that sows side logits "
                         f"(unet with side_heads=True, unet_plus_plus with deep_supervision='average' "
                         f"or 'last', resnet34_unet); {type(model).__name__} sowed none.")
    return sides


class NonFiniteError(FloatingPointError):
    """A training step produced a NaN or infinite loss or gradient norm."""


def first_non_finite(step_metrics: list[dict], first_step: int) -> tuple[int, dict] | None:
    """The step number and metrics of the first of consecutive steps' host-side `step_metrics`
    (`first_step` the number of the first) with a non-finite value; None when all are finite."""
    for step, values in enumerate(step_metrics, start=first_step):
        if not all(np.isfinite(value) for value in values.values()):
            return step, values
    return None


def check_finite(step_metrics: list[dict], first_step: int, last_checkpoint: int | None,
                 checkpoint_dir: Path) -> None:
    """Raises NonFiniteError naming the first step of `step_metrics` whose loss or gradient
    norm is not finite, and the last (good) checkpoint, which stays as it is."""
    bad = first_non_finite(step_metrics, first_step)
    if bad is None:
        return
    step, values = bad
    kept = (f"the last good checkpoint is step {last_checkpoint} in {checkpoint_dir}"
            if last_checkpoint is not None else f"no checkpoint was written to {checkpoint_dir}")
    raise NonFiniteError(
        f"Training step {step} produced a non-finite value (loss {float(values['loss'])}, gradient "
        f"norm {float(values['grad_norm'])}); training stopped before saving anything from it: "
        f"{kept}. Look at that step's data, lower config.train.learning_rate, or set "
        "config.train.grad_clip_norm.")


def predict_probabilities(state: TrainState, images: jnp.ndarray, *, model) -> jnp.ndarray:
    logits = model.apply(evaluation_variables(state), images, train=False)
    return jax.nn.sigmoid(logits)


def eval_step(state: TrainState, batch: dict, *, predict: inference.Predict, threshold: float,
              num_bins: int) -> tuple[dict, dict, jnp.ndarray]:
    """Split-level count sums, per-example counts and the probability maps of one batch;
    `predict` (see `inference.make_predictor`) maps whole images to probabilities."""
    probabilities = predict(evaluation_variables(state), batch["image"])
    cases = segmentation.case_counts(probabilities, batch, threshold=threshold, num_bins=num_bins)
    return segmentation.eval_counts(cases, batch), cases, probabilities


def classification_eval_step(state: TrainState, batch: dict, *, model, head: str) -> jnp.ndarray:
    """Every example's scores (classification.scores) of one batch."""
    outputs = model.apply(evaluation_variables(state), batch["image"], train=False)
    return classification.scores(outputs, head)


class EvalData(NamedTuple):
    """A split as `Experiment.evaluate` reads it: this process's batches, the batch count every
    process runs, and (segmentation) the scale the model sees its images at (config.inference.scale,
    or the one config.input.fov_diameter gives the split); None for classification."""
    dataset: Any
    num_batches: int
    scale: float | None


@dataclasses.dataclass
class Evaluation:
    """One pass over a split: `metrics` (segmentation.summarize or classification.summarize),
    per-case rows, the worst / best cases (segmentation; None for classification), and what
    the metrics were computed from: segmentation's accumulated counts (histograms: metrics at
    other thresholds, curves), or classification's `labels` and `scores` of every example."""
    metrics: dict
    cases: list[dict]
    gallery: segmentation.Gallery | None
    counts: dict


class Experiment:
    """What a config builds once per process: mesh, data, model, optimizer and jitted steps."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.mesh = parallel.make_mesh(config.parallel.num_devices)
        self.builder = datasets.get_builder(config.dataset.name, data_dir=config.dataset.data_dir,
                                            manual_dir=config.dataset.manual_dir,
                                            skip_bad_files=config.dataset.skip_bad_files)
        if config.task not in TASKS:
            raise ValueError(f"config.task must be one of {TASKS}, got {config.task!r}.")
        self.model = build_model(config)
        check_time_budget(config)
        self.tx = make_optimizer(config)
        if config.task == "classification":
            self.class_names = class_names(self.builder, config)
            counts = pipeline.class_counts(self.builder, config.dataset.train_split, config,
                                           len(self.class_names))
            self.class_weights = classification.resolve_class_weights(
                config.classification.class_weights, counts)
            expected_outputs = 1 if config.classification.head == "regression" else len(self.class_names)
            if config.model.num_classes != expected_outputs:
                raise ValueError(
                    f"config.model.num_classes={config.model.num_classes}, but the "
                    f"{config.classification.head} head over classes {self.class_names} needs "
                    f"{expected_outputs} output(s).")
            logging.info("Train split class counts %s, loss weights %s", dict(zip(self.class_names, counts.tolist())),
                         np.round(self.class_weights, 4).tolist())
        # `dataset` tells a later evaluation on another dataset (cross-dataset) where to report.
        self.run_info = {"model": model_record(config.model.name, self.model),
                         "model_defaults": model_defaults(self.model),
                         "optimizer": optimizer_record(config), "dataset": config.dataset.name,
                         "data": data_record(config)}
        replicated = parallel.replicated(self.mesh)
        image_shape = pipeline.model_input_shape(self.builder, config)
        root_key = jax.random.key(config.seed)
        init_key, dropout_key = jax.random.fold_in(root_key, 0), jax.random.fold_in(root_key, 1)
        self.initial_state = jax.jit(
            functools.partial(create_train_state, self.model, self.tx, image_shape=image_shape,
                              ema=config.train.ema_decay > 0),
            out_shardings=replicated)(init_key)
        self.dropout_key = dropout_key
        self.train_step = self._jit_train_step()
        if config.task == "classification":
            self.classification_eval_step = jax.jit(
                functools.partial(classification_eval_step, model=self.model,
                                  head=config.classification.head),
                out_shardings=replicated)
        else:
            inference.check_scale_settings(config)
            if config.input.fov_diameter and "fov" not in self.builder.info.features:
                raise ValueError(f"config.input.fov_diameter={config.input.fov_diameter} scales images "
                                 f"by their field of view, but dataset {config.dataset.name!r} has none; set it to 0.")
            self.segmentation_eval_steps = {}  # inference scale -> its jitted eval_step

    def _jit_train_step(self) -> Callable:
        replicated = parallel.replicated(self.mesh)
        return jax.jit(
            functools.partial(train_step, model=self.model, tx=self.tx,
                              batch_loss=self.batch_loss(), dropout_key=self.dropout_key,
                              deep_supervision=self.config.train.deep_supervision,
                              ema_decay=self.config.train.ema_decay),
            donate_argnums=(0,), out_shardings=(replicated, replicated))

    def apply_time_budget(self, budget_fit: dict) -> None:
        """Takes the fitted `num_steps` of `budget_fit` (`fit_time_budget`'s record) into the
        config, rebuilds the optimizer and train step for it and records the fit with the
        checkpoints' run info. The optimizer state keeps its structure (only the schedule's
        length changes), so a state trained so far carries on under the new step."""
        self.config.train.num_steps = budget_fit["num_steps"]
        self.tx = make_optimizer(self.config)
        self.train_step = self._jit_train_step()
        self.run_info["time_budget"] = budget_fit

    def batch_loss(self) -> Callable:
        if self.config.task == "segmentation":
            return segmentation_loss(self.config.train.loss)
        return functools.partial(classification.loss, head=self.config.classification.head,
                                 class_weights=jnp.asarray(self.class_weights),
                                 label_smoothing=self.config.classification.label_smoothing)

    def local_batch_size(self, global_batch_size: int) -> int:
        return parallel.local_batch_size(global_batch_size, self.mesh)

    def segmentation_eval_step(self, scale: float) -> Callable:
        """The jitted eval_step that predicts on images resized by `scale` (built once per scale)."""
        if scale not in self.segmentation_eval_steps:
            config = self.config
            self.segmentation_eval_steps[scale] = jax.jit(
                functools.partial(eval_step, predict=inference.make_predictor(self.model, config.inference, scale),
                                  threshold=config.eval.threshold, num_bins=config.eval.num_bins),
                out_shardings=(parallel.replicated(self.mesh), parallel.replicated(self.mesh),
                               parallel.batch_sharded(self.mesh)))
        return self.segmentation_eval_steps[scale]

    def eval_data(self, split: str) -> EvalData:
        local_batch_size = self.local_batch_size(self.config.eval.batch_size)
        dataset, num_batches = pipeline.eval_dataset(self.builder, split, self.config,
                                                     local_batch_size=local_batch_size)
        if self.config.task == "classification":
            return EvalData(dataset, num_batches, None)
        if self.config.input.fov_diameter:
            return EvalData(dataset, num_batches, self.fov_scale(split, "predicting"))
        return EvalData(dataset, num_batches, self.config.inference.scale)

    def fov_scale(self, split: str, purpose: str) -> float:
        """inference.scale_to_fov of the FOV widths of the whole split (every process reads them
        all, so all of them compile the same program); `purpose` words the log line."""
        diameter = self.config.input.fov_diameter
        widths = [inference.fov_width(fov) for fov in pipeline.fov_masks(self.builder, split, self.config)]
        scale = inference.scale_to_fov(diameter, widths, source=f"split {split!r} of {self.config.dataset.name!r}")
        logging.info("%s %r: median FOV width %.0f px, the model's %d px: %s at scale %.2f.",
                     self.config.dataset.name, split, np.median(widths), diameter, purpose, scale)
        return scale

    def training_resolution(self) -> float:
        """The scale training crops are drawn at (pipeline.train_batches' `resolution`): the one
        config.input.fov_diameter gives the train split, else 1 (the images as stored)."""
        config = self.config
        if config.task != "segmentation" or not config.input.fov_diameter:
            return 1.0
        resolution = self.fov_scale(config.dataset.train_split, "training")
        if resolution != 1 and not config.augment.crop_size:
            raise ValueError(f"config.input.fov_diameter={config.input.fov_diameter} trains on the split "
                             f"{config.dataset.train_split!r} seen at scale {resolution}, which is drawn as "
                             "crops: set config.augment.crop_size.")
        return resolution

    def evaluate(self, state: TrainState, eval_data, *, probability_dir: Path | None = None,
                 thresholds: np.ndarray | None = None) -> Evaluation:
        """Metrics over the whole split, one row per example, and the worst / best examples.

        With `probability_dir`, each process also writes its examples' probability maps there
        as `<id>.png` (0 outside the field of view). `thresholds`: a regression classifier's
        grade thresholds (None: k - 0.5).
        """
        if self.config.task == "classification":
            return self.evaluate_classification(state, eval_data, thresholds)
        dataset, num_batches, scale = eval_data
        step_at_scale = self.segmentation_eval_step(scale)
        local_batch_size = self.local_batch_size(self.config.eval.batch_size)
        total, cases = None, []
        gallery = segmentation.Gallery(self.config.eval.num_overlays)
        for batch in pipeline.padded_batches(dataset, num_batches, local_batch_size):
            model_inputs = {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}
            split_counts, example_counts, probabilities = step_at_scale(
                state, parallel.to_global_batch(model_inputs, self.mesh))
            total = metrics.accumulate(total, jax.device_get(split_counts))
            info = {key: batch[key] for key in (*pipeline.CASE_KEYS, "valid", "labelled") if key in batch}
            cases += segmentation.case_rows(jax.device_get(example_counts), gather_case_info(info))
            local_rows = segmentation.case_rows(
                jax.tree.map(parallel.process_local, example_counts), info)
            local_probabilities = multihost_utils.global_array_to_host_local_array(
                probabilities, self.mesh, jax.sharding.PartitionSpec(parallel.DATA_AXIS))
            for index, row in zip(np.flatnonzero(batch["valid"] > 0), local_rows):
                probability = np.asarray(local_probabilities[index])
                if "fov" in batch:  # what lies outside the field of view is never scored
                    probability = probability * batch["fov"][index]
                gallery.add(row, batch["image"][index], batch["mask"][index], probability)
                if probability_dir is not None:
                    io_utils.write_png(probability_dir / f"{row['id']}.png", viz.probability_map(probability))
        return Evaluation(segmentation.summarize(total, cases), cases, gallery, total)

    def evaluate_classification(self, state: TrainState, eval_data,
                                thresholds: np.ndarray | None) -> Evaluation:
        """Every example's scores, gathered in order on every process, then the split's metrics."""
        dataset, num_batches, _ = eval_data
        local_batch_size = self.local_batch_size(self.config.eval.batch_size)
        score_parts, info_parts = [], []
        for batch in pipeline.padded_batches(dataset, num_batches, local_batch_size):
            batch_scores = self.classification_eval_step(
                state, parallel.to_global_batch({"image": batch["image"]}, self.mesh))
            info = gather_case_info({key: batch[key] for key in (*pipeline.CASE_KEYS, "label", "valid")
                                     if key in batch})
            real = info.pop("valid") > 0
            score_parts.append(np.asarray(jax.device_get(batch_scores), np.float64)[real])
            info_parts.append({key: values[real] for key, values in info.items()})
        example_scores = np.concatenate(score_parts)
        info = {key: np.concatenate([part[key] for part in info_parts]) for key in info_parts[0]}
        labels = info.pop("label").astype(np.int64)
        return self.classification_evaluation({"labels": labels, "scores": example_scores, "info": info},
                                              thresholds)

    def classification_evaluation(self, counts: dict, thresholds: np.ndarray | None) -> Evaluation:
        """Metrics and per-case rows of every example's `labels` and `scores` (and `info`: ids),
        at the regression head's `thresholds` (None: k - 0.5)."""
        labels, example_scores = counts["labels"], counts["scores"]
        head = self.config.classification.head
        results = classification.summarize(labels, example_scores, head=head,
                                           class_names=self.class_names, thresholds=thresholds)
        cases = classification.case_rows(labels, example_scores, counts["info"], head=head,
                                         class_names=self.class_names, thresholds=results.get("thresholds"))
        return Evaluation(results, cases, None, counts)


def class_names(builder, config: ml_collections.ConfigDict) -> list[str]:
    """The classes' names: config.classification.class_names, else the dataset's `label` names."""
    if config.classification.class_names:
        return list(config.classification.class_names)
    label_feature = builder.info.features["label"] if "label" in builder.info.features else None
    if label_feature is None or not hasattr(label_feature, "names"):
        raise ValueError(f"Dataset {builder.name} has no class-labelled `label` feature: set "
                         "config.classification.class_names (e.g. with dataset.label_from_mask).")
    return list(label_feature.names)


# Batch features the jitted evaluation step reads (those the dataset has).
MODEL_INPUT_KEYS = ("image", "mask", "labelled", "valid", "fov", *pipeline.SECOND_OBSERVER_KEYS)


def gather_case_info(local_info: dict) -> dict:
    """Every process's per-example `local_info` (ids, validity, ...), in global batch order."""
    if jax.process_count() == 1:
        return local_info
    gathered = {}
    for key, values in local_info.items():
        if values.dtype.kind in "SUO":  # strings travel as fixed-width bytes
            encoded = np.array([str(_as_text(value)).encode() for value in values], dtype="S256")
            rows = multihost_utils.process_allgather(encoded.view(np.uint8).reshape(len(values), -1),
                                                     tiled=True)
            gathered[key] = np.ascontiguousarray(rows).view("S256")[:, 0]
        else:
            gathered[key] = np.asarray(multihost_utils.process_allgather(values, tiled=True))
    return gathered


def _as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def overlay_image(gallery: segmentation.Gallery, threshold: float) -> np.ndarray | None:
    """The gallery's cases as one contact sheet (None when it holds none)."""
    shown = gallery.cases() if gallery is not None else []
    if not shown:
        return None
    captions = [caption for caption, _ in shown]
    images = [image for _, (_, image, _, _) in shown]
    masks = [mask if row["labelled"] else None for _, (row, _, mask, _) in shown]
    predictions = [probability >= threshold for _, (_, _, _, probability) in shown]
    return viz.overlay_grid(images, masks, predictions, captions)


def restore_or_initial(experiment: Experiment, manager, step: int | None, *,
                       check_data: bool = True) -> tuple[TrainState, dict]:
    """The state at checkpoint `step` (None: the initial state) and the saved run info; with
    `check_data`, the checkpoint must have been trained on this config's data selection
    (checkpoint.check_data_selection)."""
    if step is None:
        return experiment.initial_state, {**experiment.run_info, "train_seconds": 0.0}
    return checkpoint.restore(manager, step, experiment.initial_state, experiment.run_info,
                              check_data=check_data)


def restore_evaluation_checkpoint(experiment: Experiment, workdir: str | Path) -> tuple[TrainState, int]:
    """(state, step) of the workdir checkpoint that evaluation uses (config.eval.checkpoint:
    the best, or the latest; see checkpoint.evaluation_step), for predict and Grad-CAM."""
    config = experiment.config
    manager = checkpoint.create_manager(Path(workdir) / "checkpoints", best_metric=config.checkpoint.best_metric)
    step = checkpoint.evaluation_step(manager, config.eval.checkpoint)
    # Predictions on a user's images do not depend on which examples trained the model.
    state, _ = restore_or_initial(experiment, manager, step, check_data=False)
    return state, step


def _console_progress(step: int, num_steps: int, loss: float, steps_per_second: float) -> None:
    eta_seconds = (num_steps - step) / steps_per_second if steps_per_second > 0 else float("nan")
    logging.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %s", step, num_steps, loss,
                 steps_per_second, time.strftime("%H:%M:%S", time.gmtime(eta_seconds))
                 if np.isfinite(eta_seconds) else "?")


def last_step(config: ml_collections.ConfigDict) -> int:
    """The step this launch trains to: num_steps, or `train.stop_at_step` if earlier."""
    return min(config.train.num_steps, config.train.stop_at_step or config.train.num_steps)


def resumed_time_budget(config: ml_collections.ConfigDict, run_info: dict, start_step: int,
                        where: Path) -> dict | None:
    """The schedule length a time budget fixed earlier in this run (`fit_time_budget`'s record
    in the checkpoint's `run_info`), or None: budget off, or not fitted yet. Refuses a budget
    switched on after the steps it would have timed: those followed num_steps' schedule."""
    fit = run_info.get("time_budget")
    if config.train.time_budget_minutes <= 0:
        if fit is not None:
            logging.info("%s was fitted to a time budget (num_steps %d); with "
                         "config.train.time_budget_minutes=0 it trains config.train.num_steps=%d.",
                         where, fit["num_steps"], config.train.num_steps)
        return None
    if fit is None and schedule_free_steps(config) <= start_step < config.train.num_steps:
        raise ValueError(
            f"config.train.time_budget_minutes={config.train.time_budget_minutes} fits num_steps at "
            f"step {schedule_free_steps(config)}, the end of warm-up, but {where} resumes at step "
            f"{start_step} without a fitted length: its steps followed the schedule of "
            f"config.train.num_steps={config.train.num_steps}. Resume with "
            "--config.train.time_budget_minutes=0, or train in another --workdir.")
    return fit


def fit_time_budget(config: ml_collections.ConfigDict, step: int, spent_seconds: float,
                    step_clock: tuple[int, float] | None, now: float) -> dict:
    """The record of fitting num_steps to `config.train.time_budget_minutes` at `step`, having
    trained `spent_seconds`: steps timed since `step_clock` ((step, time) after this process's
    first step), or, when this process started at `step`, the run's mean step so far."""
    if step_clock is not None and step > step_clock[0]:
        step_seconds, timed_steps = (now - step_clock[1]) / (step - step_clock[0]), step - step_clock[0]
    else:  # compilation included: an overestimate, on the safe side of the budget
        step_seconds, timed_steps = spent_seconds / step, step
    if jax.process_count() > 1:  # every process must take the same number of steps
        step_seconds, spent_seconds = (float(value) for value in multihost_utils.broadcast_one_to_all(
            np.array([step_seconds, spent_seconds], np.float32)))
    budget_minutes = config.train.time_budget_minutes
    num_steps = budgeted_num_steps(budget_minutes * 60, spent_seconds, step, step_seconds,
                                   config.train.num_steps)
    logging.info("Time budget %g min: %d steps timed at %.3f s each, %.0f s spent by step %d -> "
                 "num_steps %d (config.train.num_steps %d).", budget_minutes, timed_steps,
                 step_seconds, spent_seconds, step, num_steps, config.train.num_steps)
    return {"budget_minutes": budget_minutes, "fitted_at_step": step, "timed_steps": timed_steps,
            "step_seconds": round(step_seconds, 4), "spent_seconds": round(spent_seconds, 2),
            "configured_num_steps": config.train.num_steps, "num_steps": num_steps}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.

    Writes checkpoints (latest + best by validation `config.checkpoint.best_metric`; also every
    `config.checkpoint.every_steps` steps), TensorBoard events, and at the end
    `workdir/metrics.json` (final validation metrics, `step`, `train_seconds`). With
    `config.train.stop_at_step` the run ends early at that step (with a checkpoint), as a job of
    a fixed length in a chain would; the next run resumes. So does a run sent SIGTERM (a
    preemption notice): it finishes its step, saves a checkpoint and returns without the final
    evaluation. A non-finite loss or gradient raises NonFiniteError before anything computed
    from it is saved. With `config.train.time_budget_minutes`, num_steps is fitted to the budget
    once warm-up ends (`fit_time_budget`) and kept in the checkpoints for resumed launches.
    """
    workdir = Path(workdir)
    config = config.copy_and_resolve_references()  # a time budget changes its num_steps
    experiment = Experiment(config)
    resolution = experiment.training_resolution()  # refuses a bad setting before anything is written
    validation = experiment.eval_data(config.dataset.validation_split)
    manager = checkpoint.create_manager(workdir / "checkpoints", best_metric=config.checkpoint.best_metric,
                                        remove_partial=True)
    state, run_info = restore_or_initial(experiment, manager, manager.latest_step())
    start_step = int(state.step)
    budget_fit = resumed_time_budget(config, run_info, start_step, manager.directory)
    if budget_fit is not None:
        logging.info("num_steps %d, fitted to the time budget at step %d (recorded in %s).",
                     budget_fit["num_steps"], budget_fit["fitted_at_step"], manager.directory)
        experiment.apply_time_budget(budget_fit)
    fit_pending = config.train.time_budget_minutes > 0 and budget_fit is None
    fit_step = schedule_free_steps(config)
    num_steps, stop_step = config.train.num_steps, last_step(config)
    is_main_process = jax.process_index() == 0
    if is_main_process:
        run_config.record_config(workdir, config)
    writer = metric_writers.create_default_writer(str(workdir), just_logging=not is_main_process)
    if start_step == 0:
        writer.write_hparams(run_config.flatten_config(config))
    else:
        logging.info("Resuming from step %d in %s.", start_step, workdir)

    train_batches: Iterator = pipeline.train_batches(
        experiment.builder, config, local_batch_size=experiment.local_batch_size(config.train.batch_size),
        start_step=start_step, resolution=resolution)
    gradcam_examples = gradcam.preview_examples(experiment) if config.gradcam.tensorboard else None
    schedule = learning_rate_schedule(config)
    train_seconds = run_info["train_seconds"]
    interval_start, interval_losses, step = time.perf_counter(), [], start_step
    unchecked = []  # the step metrics (on device) not yet checked to be finite
    last_metrics, preempted = None, False
    save_every = config.checkpoint.every_steps
    step_clock = None  # (step, time) once this process's first step, compilation included, is done
    with checkpoint.PreemptionNotice() as preemption:
        while step < stop_step:
            step += 1
            batch = parallel.to_global_batch(next(train_batches), experiment.mesh)
            state, step_metrics = experiment.train_step(state, batch)
            if fit_pending and (step_clock is None or step == fit_step):
                jax.block_until_ready(state)
                now = time.perf_counter()
                if step == fit_step:
                    budget_fit = fit_time_budget(config, step, train_seconds + now - interval_start,
                                                 step_clock, now)
                    experiment.apply_time_budget(budget_fit)
                    num_steps, stop_step = config.train.num_steps, last_step(config)
                    schedule = learning_rate_schedule(config)
                    if is_main_process:
                        run_config.record_config(workdir, config)
                    fit_pending = False
                step_clock = step_clock or (step, now)
            interval_losses.append(step_metrics["loss"])
            unchecked.append(step_metrics)
            preempted = preemption.reached(step)
            is_eval_step = step % config.train.eval_every == 0 or step == stop_step
            is_save_step = is_eval_step or preempted or (save_every > 0 and step % save_every == 0)
            if step % config.train.log_every == 0 or is_save_step:
                check_finite(jax.device_get(unchecked), step - len(unchecked) + 1, manager.latest_step(),
                             manager.directory)
                unchecked = []
            if step % config.train.log_every == 0 or is_eval_step:
                mean_loss = float(np.mean(jax.device_get(interval_losses)))
                elapsed = time.perf_counter() - interval_start
                train_seconds += elapsed
                writer.write_scalars(step, {"train/loss": mean_loss, "train/learning_rate": float(schedule(step - 1)),
                                            "train/steps_per_second": len(interval_losses) / elapsed})
                _console_progress(step, num_steps, mean_loss, len(interval_losses) / elapsed)
                interval_losses = []
                interval_start = time.perf_counter()
            if is_eval_step:
                evaluation = experiment.evaluate(state, validation)
                last_metrics = evaluation.metrics
                writer.write_scalars(step, {f"validation/{k}": v for k, v in last_metrics.items()
                                            if isinstance(v, (int, float))})
                overlays = overlay_image(evaluation.gallery, config.eval.threshold)
                if overlays is not None:
                    writer.write_images(step, {"validation/overlays": overlays[None]})
                if gradcam_examples is not None and is_main_process:
                    writer.write_images(step, {"validation/gradcam": gradcam.evaluation_images(
                        experiment, state, gradcam_examples)[None]})
                logging.info("step %d validation: %s", step, _format_metrics(last_metrics))
                checkpoint.save(manager, step, state, {**experiment.run_info, "train_seconds": train_seconds},
                                {key: value for key, value in last_metrics.items() if isinstance(value, (int, float))})
                interval_start = time.perf_counter()
            elif is_save_step:  # periodic or preemption checkpoint: no metrics, never "best"
                checkpoint.save(manager, step, state, {
                    **experiment.run_info, "train_seconds": train_seconds + time.perf_counter() - interval_start})
            if preempted:
                break
    manager.wait_until_finished()
    writer.flush()
    if preempted:
        logging.warning("Preempted (SIGTERM): saved a checkpoint at step %d of %d; rerun the same "
                        "command to resume.", step, num_steps)
        return last_metrics or {}
    if stop_step < num_steps:
        logging.info("Stopped at step %d of %d as configured; rerun the same command to resume.",
                     stop_step, num_steps)
        return last_metrics or {}
    if last_metrics is None:  # nothing left to train: the checkpoint already holds the final step
        last_metrics = experiment.evaluate(state, validation).metrics
    final = {**last_metrics, "step": step, "train_seconds": round(train_seconds, 2),
             "host_cpu": onednn_conv.host_cpu()}
    if budget_fit is not None:
        final["time_budget"] = budget_fit
    if is_main_process:
        io_utils.write_json(workdir / "metrics.json", final)
    logging.info("Final validation metrics (step %d) written to %s", step, workdir / "metrics.json")
    evaluate_checkpoint(experiment, manager, config.dataset.validation_split, workdir)
    return final


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the `config.eval.checkpoint` checkpoint of `workdir` on `config.eval.split`.

    See `evaluate_checkpoint` for what it writes; returns the split's metrics.
    """
    experiment = Experiment(config)
    manager = checkpoint.create_manager(Path(workdir) / "checkpoints",
                                        best_metric=config.checkpoint.best_metric)
    return evaluate_checkpoint(experiment, manager, config.eval.split, Path(workdir))


def evaluate_checkpoint(experiment: Experiment, manager, split: str, workdir: Path) -> dict:
    """Evaluates the best checkpoint (latest if none is ranked, or if config.eval.checkpoint is
    'latest') on `split` and writes `workdir/eval/<split>/` (`eval/<dataset>/<split>/` for a
    dataset other than the one the checkpoint was trained on):

      metrics.json   split-level metrics (see segmentation.summarize) and `checkpoint_step`;
                     with config.eval.tune_threshold also `validation_threshold` and the
                     metrics at it (`at_validation_threshold`)
      per_case.csv   one row per example: id (+ subject, ...), pixel counts, dice, iou, ...
      overlays.png   image | ground truth | prediction | errors of the worst and best cases
      roc.png, pr.png              the split's ROC and precision-recall curves (labelled splits)
      probabilities/<id>.png       probability maps, with config.eval.save_probabilities
    and workdir/learning_curves.png (write_learning_curves).
    """
    config = experiment.config
    step = checkpoint.evaluation_step(manager, config.eval.checkpoint)
    state, saved_info = restore_or_initial(experiment, manager, step)
    trained_on = saved_info.get("dataset", config.dataset.name)
    out_dir = eval_dir(workdir, config.dataset.name, trained_on, split)
    own_validation = config.dataset.name == trained_on and split == config.dataset.validation_split
    if config.task == "classification":
        return evaluate_classifier(experiment, manager, state, step, split, workdir, out_dir,
                                   own_validation=own_validation, trained_on=trained_on)
    threshold = None
    if config.eval.tune_threshold and not own_validation:
        threshold = validation_threshold(experiment, manager, workdir, step, trained_on)
    eval_data = experiment.eval_data(split)
    evaluation = experiment.evaluate(
        state, eval_data, probability_dir=out_dir / "probabilities" if config.eval.save_probabilities else None)
    results = {**evaluation.metrics, "checkpoint_step": step, "inference_scale": eval_data.scale}
    labelled = results.get("labelled", True)
    if config.eval.tune_threshold and labelled:
        threshold = results["best_threshold"] if own_validation else threshold
        results["validation_threshold"] = threshold
        results["at_validation_threshold"] = segmentation.at_threshold(evaluation.counts, threshold)
    overlays = overlay_image(evaluation.gallery, config.eval.threshold)
    if jax.process_index() == 0:
        io_utils.write_json(out_dir / "metrics.json", results)
        io_utils.write_csv(out_dir / "per_case.csv", evaluation.cases, case_columns(evaluation.cases))
        write_learning_curves(workdir)
        if overlays is not None:
            io_utils.write_png(out_dir / "overlays.png", overlays)
        if labelled and results["auc_roc"] is not None:
            write_curves(out_dir, evaluation.counts, results)
    logging.info("%s metrics (checkpoint step %d): %s", split, step, _format_metrics(results))
    logging.info("Wrote metrics.json, per_case.csv, overlays.png (worst and best cases) and "
                 "curves in %s", out_dir)
    return results


def eval_dir(workdir: Path, dataset: str, trained_on: str, split: str) -> Path:
    """workdir/eval/<split>, or workdir/eval/<dataset>/<split> for a dataset the checkpoint was
    not trained on (a cross-dataset evaluation never overwrites the home dataset's results)."""
    return workdir / "eval" / split if dataset == trained_on else workdir / "eval" / dataset / split


def evaluate_classifier(experiment: Experiment, manager, state: TrainState, step: int, split: str,
                        workdir: Path, out_dir: Path, *, own_validation: bool, trained_on: str) -> dict:
    """evaluate_checkpoint for classifiers: writes `out_dir`/

      metrics.json          classification.summarize's metrics and `checkpoint_step`; for the
                            regression head also `validation_thresholds` (tuned for QWK on the
                            validation split) and the metrics at them (`at_validation_thresholds`)
      per_case.csv          id, label, predicted, correct, and the class probabilities / output
      confusion.png/.json   the confusion matrix (rows = true class)
      roc.png               two classes: the ROC curve of the positive class
    and workdir/learning_curves.png (write_learning_curves).
    """
    config = experiment.config
    evaluation = experiment.evaluate(state, experiment.eval_data(split))
    results = {**evaluation.metrics, "checkpoint_step": step}
    if config.classification.head == "regression":
        if own_validation:
            thresholds = classification.tune_thresholds(evaluation.counts["labels"], evaluation.counts["scores"],
                                                        len(experiment.class_names))
        else:
            thresholds = np.asarray(validation_threshold(experiment, manager, workdir, step, trained_on,
                                                         key="validation_thresholds"))
        tuned = experiment.classification_evaluation(evaluation.counts, thresholds)
        results["validation_thresholds"] = [float(value) for value in thresholds]
        results["at_validation_thresholds"] = {key: value for key, value in tuned.metrics.items()
                                               if key != "class_names"}
        evaluation = tuned
    if jax.process_index() == 0:
        io_utils.write_json(out_dir / "metrics.json", results)
        io_utils.write_csv(out_dir / "per_case.csv", evaluation.cases, list(evaluation.cases[0]))
        write_learning_curves(workdir)
        matrix = evaluation.metrics["confusion_matrix"]
        io_utils.write_json(out_dir / "confusion.json", {"class_names": experiment.class_names,
                                                         "rows_true_columns_predicted": matrix})
        io_utils.write_png(out_dir / "confusion.png", viz.confusion_matrix_image(
            np.asarray(matrix), experiment.class_names,
            title=f"{split}: accuracy {results['accuracy']:.3f}  QWK {results['qwk']:.3f}"))
        if len(experiment.class_names) == 2 and config.classification.head == "softmax":
            write_binary_roc(out_dir, evaluation.counts, experiment.class_names[1])
    logging.info("%s metrics (checkpoint step %d): %s", split, step, _format_metrics(results))
    logging.info("Wrote metrics.json, per_case.csv, confusion.png in %s", out_dir)
    return results


def write_learning_curves(workdir: Path) -> None:
    """workdir/learning_curves.png: training loss and validation metrics against the step, from
    the run's TensorBoard scalars (nothing when the workdir holds no training log)."""
    curves = viz.learning_curves(io_utils.read_scalar_history(workdir))
    if curves is not None:
        io_utils.write_png(workdir / "learning_curves.png", curves)


def write_binary_roc(out_dir: Path, counts: dict, positive_name: str) -> None:
    """roc.png of a two-class classifier's positive-class probability, with the exact AUC."""
    positive = counts["labels"] == 1
    score = counts["scores"][:, 1]
    auc = classification.auc_roc(score, positive)
    if auc is None:
        return
    order = np.argsort(-score, kind="stable")
    tpr = np.r_[0.0, np.cumsum(positive[order]) / positive.sum()]
    fpr = np.r_[0.0, np.cumsum(~positive[order]) / (~positive).sum()]
    io_utils.write_png(out_dir / "roc.png", viz.curve_plot(
        fpr, tpr, title=f"ROC ({positive_name})  AUC {auc:.4f}", x_label="1 - specificity",
        y_label="sensitivity", diagonal=True))


def validation_threshold(experiment: Experiment, manager, workdir: Path, step: int,
                         trained_on: str, key: str = "best_threshold"):
    """The threshold(s) `key` chosen for checkpoint `step` on the validation split of the
    dataset it was trained on (default: the F1-maximising segmentation threshold), from
    `eval/<validation split>/metrics.json`. When that file is missing or holds another
    checkpoint's, the validation split is evaluated first (on the home dataset)."""
    config = experiment.config
    path = workdir / "eval" / config.dataset.validation_split / "metrics.json"

    def saved_threshold():
        return saved_validation_choice(workdir, config.dataset.validation_split, step, key)

    if saved_threshold() is None:
        if config.dataset.name != trained_on:
            raise FileNotFoundError(
                f"{path} has no threshold chosen for checkpoint {step}: evaluate the validation "
                f"split of {trained_on!r} first (--mode=evaluate --config.dataset.name={trained_on} "
                f"--config.eval.split={config.dataset.validation_split} with the same workdir), or "
                "pass --config.eval.tune_threshold=False.")
        evaluate_checkpoint(experiment, manager, config.dataset.validation_split, workdir)
    threshold = saved_threshold()
    if threshold is None:
        raise ValueError(f"{path} has no {key}: the validation split has no positive example "
                         "to choose a threshold on.")
    return threshold


def saved_validation_choice(workdir: Path, validation_split: str, step: int, key: str):
    """The value of `key` (e.g. a threshold chosen on the validation split) in
    workdir/eval/<validation_split>/metrics.json when it was written for checkpoint `step`;
    None otherwise."""
    path = Path(workdir) / "eval" / validation_split / "metrics.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    return saved.get(key) if saved.get("checkpoint_step") == step else None


def write_curves(out_dir: Path, counts: dict, results: dict) -> None:
    """roc.png and pr.png of the accumulated histograms, with the AUCs in their titles."""
    points = metrics.curves(counts["pos_hist"], counts["neg_hist"])
    io_utils.write_png(out_dir / "roc.png", viz.curve_plot(
        points["fpr"], points["tpr"], title=f"ROC  AUC {results['auc_roc']:.4f}",
        x_label="1 - specificity", y_label="sensitivity", diagonal=True))
    io_utils.write_png(out_dir / "pr.png", viz.curve_plot(
        points["recall"], points["precision"], title=f"Precision-recall  AP {results['auc_pr']:.4f}",
        x_label="recall", y_label="precision"))


def case_columns(cases: list[dict]) -> list[str]:
    """per_case.csv columns: the identifying ones the rows have, then the metric columns."""
    present = {key for case in cases for key in case}
    identifying = [key for key in (*pipeline.CASE_KEYS, "labelled") if key in present]
    return identifying + [key for key in segmentation.CASE_COLUMNS if key in present]


def _format_metrics(values: dict) -> str:
    """The scalar metrics on one line (per-class tables and matrices are in metrics.json)."""
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
                     if not isinstance(v, (dict, list)))
