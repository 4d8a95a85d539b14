"""Crops (positive-aware, zoom, shift), speckle and the median denoiser: exact where they can be."""
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from configs import edema
from retina_jax.data import augment, pipeline, preprocess


def ramp_example(height=40, width=60, lesion=(slice(30, 34), slice(50, 55))):
    """image = 1000 * row + col (every pixel distinct), mask = one small lesion."""
    rows, cols = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width, 1), np.float32)
    mask[lesion] = 1.0
    return {"image": tf.constant((1000.0 * rows + cols)[..., None], tf.float32),
            "mask": tf.constant(mask), "labelled": tf.constant(1.0)}


def crop(example, seed, **kwargs):
    options = dict(out_size=(16, 16), scale=0.0, shift=0.0, positive_fraction=0.0, fill_value=-7.0)
    return augment.crop_scale_shift(example, tf.constant([seed, 5], tf.int64), **{**options, **kwargs})


@pytest.mark.parametrize("seed", range(6))
def test_plain_crop_copies_a_window_of_pixels(seed):
    example = ramp_example()
    out = crop(example, seed)
    image = out["image"].numpy()[..., 0]
    top, left = int(image[0, 0]) // 1000, int(image[0, 0]) % 1000
    np.testing.assert_array_equal(image, example["image"].numpy()[top:top + 16, left:left + 16, 0])
    np.testing.assert_array_equal(out["mask"].numpy(), example["mask"].numpy()[top:top + 16, left:left + 16])


def test_positive_crops_contain_the_lesion_and_plain_ones_mostly_do_not():
    example = ramp_example()
    positive = [crop(example, seed, positive_fraction=1.0)["mask"].numpy().sum() > 0 for seed in range(20)]
    anywhere = [crop(example, seed)["mask"].numpy().sum() > 0 for seed in range(20)]
    assert all(positive)
    assert sum(anywhere) < 15


def test_crop_without_foreground_falls_back_to_anywhere():
    example = {**ramp_example(), "mask": tf.zeros((40, 60, 1))}
    out = crop(example, 3, positive_fraction=1.0)
    assert out["image"].shape == (16, 16, 1) and not out["mask"].numpy().any()


def test_zoom_keeps_mask_on_image_and_shift_fills_outside():
    rows, cols = np.mgrid[0:40, 0:60]
    square = ((rows >= 10) & (rows < 30) & (cols >= 20) & (cols < 40)).astype(np.float32)[..., None]
    example = {"image": tf.constant(square * 5.0), "mask": tf.constant(square), "labelled": tf.constant(1.0)}
    for seed in range(8):
        out = crop(example, seed, out_size=None, scale=0.3, shift=0.3)
        image, mask = out["image"].numpy(), out["mask"].numpy()
        assert image.shape == (40, 60, 1)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        # The nearest pixel has bilinear weight >= 1/4: a mask pixel never samples only background.
        assert np.all(image[mask > 0] >= 5.0 / 4)
        outside = (image == -7.0)
        assert not np.any(mask[outside])


def test_speckle_is_multiplicative_around_black():
    black = preprocess.black_level(0.2, 0.25)
    image = tf.constant([[[black], [black + 1.0]], [[black + 2.0], [black + 4.0]]], tf.float32)
    example = {"image": image, "mask": tf.zeros((2, 2, 1))}
    out = augment.speckle(example, tf.constant([1, 2], tf.int64), sigma=0.1, black_level=black)
    ratio = (out["image"].numpy() - black)[1:] / (image.numpy() - black)[1:]
    assert out["image"].numpy()[0, 0, 0] == pytest.approx(black)  # black stays black
    assert np.all(np.abs(ratio - 1) < 0.5) and np.any(ratio != 1)


def test_median3_matches_scipy_eagerly_and_in_dataset_map():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 11, 2)).astype(np.float32)
    expected = np.stack([scipy.ndimage.median_filter(image[..., c], size=3, mode="constant", cval=0.0)
                         for c in range(2)], axis=-1)
    np.testing.assert_allclose(preprocess.median3(tf.constant(image)).numpy(), expected)
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(preprocess.median3))).numpy()
    np.testing.assert_allclose(mapped, expected)


def test_unknown_denoiser_is_named():
    with pytest.raises(ValueError, match="config.input.denoise must be one of"):
        preprocess.denoise(tf.zeros((4, 4, 1)), "bilateral")


def test_edema_augmentation_is_identical_eagerly_and_inside_dataset_map():
    config = edema.get_config()
    config.augment.crop_size = (32, 48)
    example = ramp_example()
    black = preprocess.black_level(config.input.mean, config.input.std)
    seeds = [tf.constant([seed, 0], tf.int64) for seed in range(4)]
    eager = [augment.augment_example(example, seed, config.augment, black_level=black) for seed in seeds]
    mapped = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
        lambda seed: augment.augment_example(example, seed, config.augment, black_level=black))
    for expected, got in zip(eager, mapped):
        assert got["image"].shape == (32, 48, 1)
        np.testing.assert_array_equal(got["image"].numpy(), expected["image"].numpy())
        np.testing.assert_array_equal(got["mask"].numpy(), expected["mask"].numpy())


def test_edema_train_batches_are_crops_with_fluid(duke_builder):
    config = edema.get_config()
    config.augment.positive_crop_fraction = 1.0
    batches = pipeline.train_batches(duke_builder, config, local_batch_size=8, start_step=0)
    batch = next(batches)
    assert batch["image"].shape == (8, 256, 256, 1) and batch["mask"].shape == (8, 256, 256, 1)
    # Every train B-scan with fluid gives a crop with fluid; 7 of 44 have none (subjects 1-4).
    assert (batch["mask"].reshape(8, -1).max(axis=1) > 0).sum() >= 4
    resumed = next(pipeline.train_batches(duke_builder, config, local_batch_size=8, start_step=1))
    np.testing.assert_array_equal(next(batches)["image"], resumed["image"])


def test_crop_larger_than_the_image_is_refused():
    with pytest.raises(ValueError, match="Crop 64x16 is larger than the 40x60 images"):
        crop(ramp_example(), 0, out_size=(64, 16))
