import itertools

import numpy as np
import pytest
import tensorflow as tf

from configs import vessels
from retina_jax.data import augment, pipeline, preprocess


def take(iterator, count):
    return list(itertools.islice(iterator, count))


@pytest.fixture
def config():
    config = vessels.get_config()
    config.dataset.shuffle_buffer = 64
    return config


def test_train_batches_are_a_function_of_seed_and_step(vessel_builder, config):
    first = take(pipeline.train_batches(vessel_builder, config, local_batch_size=8, start_step=0), 40)
    again = take(pipeline.train_batches(vessel_builder, config, local_batch_size=8, start_step=0), 40)
    # Step 70 * 8 = 560 crosses the 537-example epoch boundary: resume must still line up.
    resumed = take(pipeline.train_batches(vessel_builder, config, local_batch_size=8, start_step=30), 10)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    for a, b in zip(first[30:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    late = take(pipeline.train_batches(vessel_builder, config, local_batch_size=8, start_step=66), 4)
    late_straight = take(pipeline.train_batches(vessel_builder, config, local_batch_size=8,
                                                start_step=0), 70)[66:]
    for a, b in zip(late_straight, late):
        np.testing.assert_array_equal(a["image"], b["image"])
    config.seed = 1
    other_seed = take(pipeline.train_batches(vessel_builder, config, local_batch_size=8, start_step=0), 1)
    assert not np.array_equal(other_seed[0]["image"], first[0]["image"])


def test_train_batches_shapes_and_epoch_covers_every_example(vessel_builder, config):
    config.augment.update(hflip=False, vflip=False, rot90=False, brightness=0.0, contrast=0.0)
    batches = take(pipeline.train_batches(vessel_builder, config, local_batch_size=1, start_step=0), 537)
    assert batches[0]["image"].shape == (1, 64, 64, 1) and batches[0]["image"].dtype == np.float32
    assert batches[0]["mask"].shape == (1, 64, 64, 1)
    fingerprints = {batch["image"].tobytes() for batch in batches}
    assert len(fingerprints) == 537  # one epoch = every training example exactly once


def coordinate_example(size=16):
    """An image whose grey levels are all distinct, and a mask = its brightest half."""
    image = np.arange(size * size, dtype=np.float32).reshape(size, size, 1)
    image = np.random.default_rng(0).permutation(image.ravel()).reshape(size, size, 1)
    return {"image": tf.constant(image), "mask": tf.constant((image >= size * size / 2).astype(np.float32)),
            "labelled": tf.constant(1.0)}


def assert_mask_follows_image(example):
    image, mask = example["image"].numpy(), example["mask"].numpy() > 0
    assert image[mask].min() > image[~mask].max()
    assert mask.sum() == mask.size // 2


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_keeps_image_and_mask_aligned(config, seed):
    example = coordinate_example()
    augmented = augment.augment_example(example, tf.constant([seed, 3], tf.int64), config.augment)
    assert_mask_follows_image(augmented)
    assert set(augmented) == set(example)


def test_augmentation_is_identical_eagerly_and_inside_dataset_map(config):
    example = coordinate_example()
    seeds = [tf.constant([seed, 0], tf.int64) for seed in range(6)]
    eager = [augment.augment_example(example, seed, config.augment) for seed in seeds]
    mapped = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
        lambda seed: augment.augment_example(example, seed, config.augment))
    for expected, got in zip(eager, mapped):
        np.testing.assert_allclose(got["image"].numpy(), expected["image"].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(got["mask"].numpy(), expected["mask"].numpy())
    geometries = {e["mask"].numpy().tobytes() for e in eager}
    assert len(geometries) > 1  # the seeds do change the geometry


def test_flip_and_rotate_matches_numpy():
    example = coordinate_example()
    image = example["image"].numpy()
    out = augment.flip_and_rotate(example, tf.constant([0, 0], tf.int64), hflip=False, vflip=False,
                                  rot90=False)
    np.testing.assert_array_equal(out["image"].numpy(), image)
    seen = set()
    for seed in range(40):
        out = augment.flip_and_rotate(example, tf.constant([seed, 1], tf.int64), hflip=True,
                                      vflip=True, rot90=True)
        candidates = [np.rot90(variant, k, axes=(0, 1)) for variant in (image, image[:, ::-1])
                      for k in range(4)]
        matches = [i for i, c in enumerate(candidates) if np.array_equal(c, out["image"].numpy())]
        assert matches, "the output must be one of the 8 symmetries of the square"
        seen.add(matches[0])
    assert len(seen) == 8


def test_normalize_image_values():
    image = tf.constant([[[0]], [[255]]], tf.uint8)
    np.testing.assert_allclose(preprocess.normalize_image(image, 0.5, 0.25).numpy().ravel(), [-2.0, 2.0])


def test_processes_read_disjoint_parts_that_cover_the_split(vessel_builder, config):
    seen = []
    for process_index in range(3):
        dataset, num_batches = pipeline.eval_dataset(vessel_builder, "validation", config, local_batch_size=16,
                                                     process_index=process_index, process_count=3)
        assert num_batches == 4  # ceil(ceil(173 / 3) / 16): every process runs the same count
        batches = list(pipeline.padded_batches(dataset, num_batches, 16))
        images = np.concatenate([b["image"][b["valid"] > 0] for b in batches])
        seen.append({image.tobytes() for image in images})
    assert sum(len(part) for part in seen) == 173
    assert len(set.union(*seen)) == 173


def test_eval_batches_are_padded_and_marked(vessel_builder, config):
    dataset, num_batches = pipeline.eval_dataset(vessel_builder, "validation", config, local_batch_size=64)
    batches = list(pipeline.padded_batches(dataset, num_batches, 64))
    assert num_batches == 3 and all(b["image"].shape == (64, 64, 64, 1) for b in batches)
    assert [int(b["valid"].sum()) for b in batches] == [64, 64, 45]
    assert not batches[-1]["image"][45:].any()


def test_train_split_smaller_than_a_batch_is_refused(vessel_builder, config):
    config.dataset.train_split = "validation[:4]"
    with pytest.raises(ValueError, match="fewer than its batch"):
        next(pipeline.train_batches(vessel_builder, config, local_batch_size=8, start_step=0))


def test_unknown_split_is_named(vessel_builder, config):
    with pytest.raises(ValueError, match="no split 'tset'"):
        pipeline.eval_dataset(vessel_builder, "tset", config, local_batch_size=8)
