"""tf.data pipelines: split -> decode -> preprocess -> augment -> batch -> per-process shard.

Training data is a pure function of (seed, step): the example order of epoch `e` comes from a
shuffle seeded by (seed, e) and the augmentation of the k-th example from the stateless seed
(seed, k), so a run resumed at step s reads exactly what an uninterrupted run reads from step s
on, without replaying the steps before it. Each process reads its own disjoint part of the split.

Cross-validation (`config.dataset.cross_validation.num_folds` > 0) redefines the config's train
and validation splits over one pool of examples (`select`): the groups of the pool (its
distinct `group_by` values: an image id, a subject) sorted, group i in fold i % num_folds; the
validation split is fold `fold`, the train split the other folds. Other splits read as named.
"""
import dataclasses
from typing import Iterator

import jax
import numpy as np
from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from retina_jax.data.augment import augment_example
from retina_jax.data.preprocess import black_level, preprocess_example, resize_example

# Features that identify an evaluation example in per-case tables (kept when the dataset has them).
CASE_KEYS = ("id", "subject", "bscan_index")
# A second human observer's annotation (mask2, and whether the example has one): evaluation
# scores it against the first observer's `mask` as the human reference.
SECOND_OBSERVER_KEYS = ("mask2", "has_mask2")


def process_split(split: str, process_index: int, process_count: int) -> str:
    """The part of `split` that process `process_index` of `process_count` reads (disjoint parts)."""
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


@dataclasses.dataclass(frozen=True)
class Selection:
    """The examples a split name reads: TFDS split `source`, of which, when `groups` is set, only
    those whose feature `group_by` is one of `groups` (cross-validation folds)."""
    source: str
    group_by: str | None = None
    groups: tuple[str, ...] | None = None


def select(builder, split: str, config) -> Selection:
    """What `split` reads under `config` (see the module docstring on cross-validation)."""
    folds = config.dataset.cross_validation
    if not folds.num_folds or split not in (config.dataset.train_split, config.dataset.validation_split):
        check_split(builder, split)
        return Selection(split)
    if folds.num_folds < 2 or not 0 <= folds.fold < folds.num_folds:
        raise ValueError(f"config.dataset.cross_validation: fold {folds.fold} of num_folds "
                         f"{folds.num_folds}; expected num_folds >= 2 and 0 <= fold < num_folds.")
    if config.dataset.train_split == config.dataset.validation_split:
        raise ValueError(f"Cross-validation needs distinct config.dataset.train_split and validation_split "
                         f"(both {split!r}): they name the training folds and the held-out fold.")
    check_split(builder, folds.pool)
    if folds.group_by not in builder.info.features:
        raise ValueError(f"config.dataset.cross_validation.group_by={folds.group_by!r} is not a feature of "
                         f"{builder.name}; it has {sorted(builder.info.features)}.")
    groups = sorted(set(group_values(builder, folds.pool, folds.group_by)))
    if len(groups) < folds.num_folds:
        raise ValueError(f"Split {folds.pool!r} of {builder.name} has {len(groups)} distinct "
                         f"{folds.group_by!r} values, fewer than the {folds.num_folds} folds.")
    held_out = groups[folds.fold::folds.num_folds]
    chosen = held_out if split == config.dataset.validation_split else [
        group for group in groups if group not in held_out]
    logging.info("Cross-validation fold %d of %d: split %r reads %d of the %d %r groups of %r: %s",
                 folds.fold, folds.num_folds, split, len(chosen), len(groups), folds.group_by, folds.pool,
                 " ".join(chosen))
    return Selection(folds.pool, folds.group_by, tuple(chosen))


def group_values(builder, split: str, feature: str) -> list[str]:
    """The value of `feature` (a text or integer feature) of every example of `split`, as text;
    images are not decoded."""
    skip_images = {name: tfds.decode.SkipDecoding() for name, spec in builder.info.features.items()
                   if isinstance(spec, tfds.features.Image)}
    values = builder.as_dataset(split=split, decoders=skip_images).map(lambda example: _as_text(example[feature]))
    return [value.decode() for value in values.as_numpy_iterator()]


def _as_text(value: tf.Tensor) -> tf.Tensor:
    return value if value.dtype == tf.string else tf.strings.as_string(value)


def selection_size(builder, selection: Selection, process_index: int, process_count: int) -> int:
    """Examples of `selection` that process `process_index` of `process_count` reads."""
    part = process_split(selection.source, process_index, process_count)
    if selection.groups is None:
        return builder.info.splits[part].num_examples
    return sum(value in selection.groups for value in group_values(builder, part, selection.group_by))


def _read_selected(builder, selection: Selection, process_index: int = 0, process_count: int = 1,
                   decoders: dict | None = None) -> tf.data.Dataset:
    """This process's part of `selection`, in a fixed order."""
    dataset = builder.as_dataset(split=process_split(selection.source, process_index, process_count),
                                 shuffle_files=False, decoders=decoders,
                                 read_config=tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1))
    if selection.groups is None:
        return dataset
    groups = tf.constant(selection.groups)
    return dataset.filter(lambda example: tf.reduce_any(tf.equal(_as_text(example[selection.group_by]), groups)))


def _read_preprocessed(builder, selection: Selection, config, keep_keys: tuple[str, ...] = (),
                       process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """Preprocessed examples of this process's part of `selection` in a fixed order, plus the
    features named in `keep_keys`."""
    dataset = _read_selected(builder, selection, process_index, process_count)
    kept = [key for key in keep_keys if key in builder.info.features]

    def preprocess(example):
        kept_features = {key: example[key] for key in kept}
        if config.input.resize:  # a kept mask (the second observer's) must match the resized one
            kept_features = resize_example(kept_features, config.input.resize)
        if config.dataset.label_from_mask:
            example = mask_to_label(example)
        return {**preprocess_example(example, config.input), **kept_features}

    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.cache() if config.dataset.cache else dataset


def mask_to_label(example: dict) -> dict:
    """A segmentation example as a classification one: `label` = 1 when its full-resolution
    mask has any foreground pixel (e.g. "this B-scan shows fluid"), else 0; the mask is dropped."""
    label = tf.cast(tf.reduce_any(example["mask"] > 0), tf.int32)
    return {**{key: value for key, value in example.items() if key != "mask"}, "label": label}


def class_counts(builder, split: str, config, num_classes: int) -> np.ndarray:
    """(num_classes,) examples per class in `split` (labels only: images are not decoded unless
    the labels come from the masks)."""
    selection = select(builder, split, config)
    if config.dataset.label_from_mask:
        dataset = _read_selected(builder, selection).map(lambda example: mask_to_label(example)["label"])
    else:
        dataset = _read_selected(builder, selection, decoders={"image": tfds.decode.SkipDecoding()})
        dataset = dataset.map(lambda example: example["label"])
    labels = np.fromiter(dataset.as_numpy_iterator(), np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Split {split!r} of {builder.name} has labels {sorted(set(labels.tolist()))}; "
                         f"config.model.num_classes={num_classes} allows 0..{num_classes - 1}.")
    return np.bincount(labels, minlength=num_classes)


def model_input_shape(builder, config) -> tuple[int, int, int]:
    """(H, W, C) of one preprocessed training input: the crop size when training on crops, else
    the dataset's image size; C counts the channels after preprocessing (1 for "green")."""
    any_split = next(iter(builder.info.splits))
    height, width, channels = _read_preprocessed(builder, Selection(any_split), config).element_spec["image"].shape
    if config.augment.crop_size:
        height, width = config.augment.crop_size
    if None in (height, width, channels):
        raise ValueError(f"Dataset {builder.name} has variable image size {(height, width, channels)}; "
                         "set config.augment.crop_size.")
    return height, width, channels


def train_batches(builder, config, *, local_batch_size: int, start_step: int, resolution: float = 1.0,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Endless augmented training batches of this process, starting at global step `start_step`,
    cropped at `resolution` (augment.crop_scale_shift: the images seen that many times as large).

    An epoch shows every example `config.augment.patches_per_image` times (each time with its
    own crop and augmentation): a few large images then feed many small training patches.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    split = config.dataset.train_split
    selection = select(builder, split, config)
    repeats = config.augment.patches_per_image
    # Repeats of a cached example share its tensors: memory stays one copy of the split.
    examples = _read_preprocessed(builder, selection, config, process_index=process_index,
                                  process_count=process_count).repeat(repeats)
    num_examples = selection_size(builder, selection, process_index, process_count) * repeats
    if num_examples < local_batch_size:
        raise ValueError(f"Split {split!r} of {builder.name} gives {num_examples} examples per "
                         f"epoch for this process, fewer than its batch of {local_batch_size}.")
    buffer_size = min(config.dataset.shuffle_buffer, num_examples)
    first_index = start_step * local_batch_size
    first_epoch, offset_in_epoch = divmod(first_index, num_examples)

    def epoch_examples(epoch):
        return examples.shuffle(buffer_size, seed=config.seed * 1_000_003 + epoch,
                                reshuffle_each_iteration=False)

    stream = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_examples)
    stream = stream.skip(offset_in_epoch)
    indices = tf.data.Dataset.range(first_index, np.iinfo(np.int64).max)

    # Per-image standardisation leaves no fixed black level: regions from outside read as the
    # image's mean (0).
    fill = 0.0 if config.input.standardize == "image" else black_level(config.input.mean, config.input.std)

    def augment(example_index, example):
        # Unique per (process, example): processes never share augmentation randomness.
        seed = tf.stack([tf.constant(config.seed, tf.int64),
                         example_index * process_count + process_index])
        return augment_example(example, seed, config.augment, black_level=fill, resolution=resolution)

    stream = tf.data.Dataset.zip(indices, stream).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    stream = stream.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return stream.as_numpy_iterator()


def fov_masks(builder, split: str, config) -> Iterator[np.ndarray]:
    """The (H, W, 1) field-of-view mask of every example of `split` (the whole split, in every
    process: all of them see the same masks), at the size the model sees (config.input.resize);
    the other images are not decoded."""
    other_images = {name: tfds.decode.SkipDecoding() for name, spec in builder.info.features.items()
                    if isinstance(spec, tfds.features.Image) and name != "fov"}
    masks = _read_selected(builder, select(builder, split, config), decoders=other_images).map(
        lambda example: fov_as_seen(example["fov"], config))
    return masks.as_numpy_iterator()


def fov_as_seen(fov, config):
    """An (H, W, 1) field-of-view mask at the size the model sees its image: config.input.resize,
    by nearest neighbour as preprocessing resizes masks (resize_example); as it is without one."""
    return resize_example({"fov": fov}, config.input.resize)["fov"] if config.input.resize else fov


def check_split(builder, split: str) -> None:
    """Raises, naming the splits there are and where their files go, when `split` (a name, or
    TFDS split arithmetic such as "train+validation") names a split the prepared data lacks."""
    names = split.replace("+", " ").split()
    missing = [name for name in names if name.split("[")[0] not in builder.info.splits]
    if missing:
        raise ValueError(f"Dataset {builder.name} has no split {missing[0]!r}; it has "
                         f"{sorted(builder.info.splits)}.\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")


def num_eval_batches(builder, selection: Selection, local_batch_size: int, process_count: int) -> int:
    """Batches every process runs for `selection`, so that all processes step together."""
    largest_part = max(selection_size(builder, selection, index, process_count)
                       for index in range(process_count))
    return -(-largest_part // local_batch_size)


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Pads along axis 0 with zeros and adds `valid` (1 = real example, 0 = padding)."""
    num_real = len(batch["image"])
    batch = {**batch, "valid": np.ones(num_real, np.float32)}
    return {key: np.concatenate([value, np.zeros((batch_size - num_real, *value.shape[1:]), value.dtype)])
            for key, value in batch.items()}


def eval_dataset(builder, split: str, config, *, local_batch_size: int,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> tuple[tf.data.Dataset, int]:
    """This process's part of `split`, in order, batched; and the batch count every process runs.

    Batches carry the `CASE_KEYS` the dataset has (e.g. `id`) besides the model's inputs.

    Build it once and pass it to `padded_batches` for every evaluation: with `dataset.cache`
    the decoded split stays in memory between evaluations.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    selection = select(builder, split, config)
    num_batches = num_eval_batches(builder, selection, local_batch_size, process_count)
    dataset = _read_preprocessed(builder, selection, config, keep_keys=CASE_KEYS + SECOND_OBSERVER_KEYS,
                                 process_index=process_index, process_count=process_count)
    return dataset.batch(local_batch_size).prefetch(tf.data.AUTOTUNE), num_batches


def padded_batches(dataset: tf.data.Dataset, num_batches: int, local_batch_size: int
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Exactly `num_batches` batches of `local_batch_size` (padded, then all-padding ones)."""
    empty = {key: np.zeros((0, *spec.shape[1:]), spec.dtype.as_numpy_dtype)
             for key, spec in dataset.element_spec.items()}
    batches = dataset.as_numpy_iterator()
    for _ in range(num_batches):
        yield _pad_batch(next(batches, empty), local_batch_size)
