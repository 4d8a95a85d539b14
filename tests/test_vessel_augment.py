"""Patch training for fundus images: crops centred inside the FOV, turned crops, the FOV mask
carried along, several patches per image per epoch, and resume on patch streams."""
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from configs import drive
from retina_jax.data import augment, pipeline


def disc_example(size=40, centre=(22, 16), radius=11):
    """image = 1000 * row + col, fov = a disc (~37% of where an 8x8 crop's centre can be),
    mask = its left half."""
    rows, cols = np.mgrid[0:size, 0:size]
    disc = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2)[..., None]
    return {"image": tf.constant((1000.0 * rows + cols)[..., None], tf.float32),
            "mask": tf.constant((disc & (cols[..., None] < centre[1])).astype(np.float32)),
            "fov": tf.constant(disc.astype(np.float32)), "labelled": tf.constant(1.0)}


def crop(example, seed, **kwargs):
    options = dict(out_size=(8, 8), scale=0.0, shift=0.0, positive_fraction=0.0, fill_value=0.0)
    return augment.crop_scale_shift(example, tf.constant([seed, 9], tf.int64), **{**options, **kwargs})


def test_crops_are_centred_inside_the_field_of_view():
    example = disc_example()
    for seed in range(30):
        out = crop(example, seed)
        # An 8x8 window's pixel (4, 4) holds its centre point; the FOV travels with the crop.
        assert out["fov"].numpy()[4, 4, 0] == 1.0
        image = out["image"].numpy()[..., 0]
        top, left = int(image[0, 0]) // 1000, int(image[0, 0]) % 1000
        np.testing.assert_array_equal(out["fov"].numpy(), example["fov"].numpy()[top:top + 8, left:left + 8])
    without_fov = {key: value for key, value in example.items() if key != "fov"}
    centres = [int(crop(without_fov, seed)["image"].numpy()[4, 4, 0]) for seed in range(30)]
    in_disc = [example["fov"].numpy()[centre // 1000, centre % 1000, 0] for centre in centres]
    assert sum(in_disc) < 20  # without a FOV, centres fall anywhere


def test_crops_at_a_resolution_show_the_image_that_many_times_as_large():
    """The image holds each pixel's own (row, col): a bilinear crop reads the point it samples."""
    example = disc_example()
    rows, cols = np.mgrid[0:40, 0:40].astype(np.float32)
    example["image"] = tf.constant(np.stack([rows, cols], axis=-1))
    disc = example["fov"].numpy()[..., 0]
    for rotation in (0.0, 45.0):
        out = crop(example, 3, resolution=2.0, rotation=rotation)
        points = out["image"].numpy()
        # Neighbouring output pixels sample points half an image pixel apart, at right angles.
        down, right = points[1, 0] - points[0, 0], points[0, 1] - points[0, 0]
        np.testing.assert_allclose([np.linalg.norm(down), np.linalg.norm(right), down @ right], [0.5, 0.5, 0.0],
                                   atol=1e-4)
        np.testing.assert_allclose(np.diff(points, axis=0), np.broadcast_to(down, (7, 8, 2)), atol=1e-3)
        np.testing.assert_allclose(np.diff(points, axis=1), np.broadcast_to(right, (8, 7, 2)), atol=1e-3)
        # The FOV is read by nearest neighbour at the same points.
        nearest = np.round(points).astype(int)
        np.testing.assert_array_equal(out["fov"].numpy()[..., 0], disc[nearest[..., 0], nearest[..., 1]])
    with pytest.raises(ValueError, match="resolution 2.0 need an output size"):
        crop(example, 3, resolution=2.0, out_size=None)


def test_point_inside_falls_back_to_the_last_draw_when_the_region_is_empty():
    low, high = tf.constant([0.0, 0.0]), tf.constant([10.0, 10.0])
    point = augment.point_inside(tf.zeros((10, 10, 1)), tf.constant([1, 2], tf.int64), low, high)
    candidates = tf.random.stateless_uniform([augment.FOV_CENTRE_CANDIDATES, 2], tf.constant([1, 2], tf.int64),
                                             low, high)
    np.testing.assert_array_equal(point.numpy(), candidates[-1].numpy())


def test_a_quarter_turn_crop_is_numpy_rot90_of_the_window():
    rows, cols = np.mgrid[0:5, 0:5]
    image = tf.constant((10.0 * rows + cols)[..., None], tf.float32)
    centre = tf.constant([2.5, 2.5])  # the middle of pixel (2, 2)
    window = image.numpy()[1:4, 1:4]
    straight = augment.rotated_crop(image, centre, tf.constant(0.0), spacing=1.0, out_size=(3, 3), nearest=False)
    np.testing.assert_allclose(straight.numpy(), window, atol=1e-4)
    turned = augment.rotated_crop(image, centre, tf.constant(math.pi / 2), spacing=1.0, out_size=(3, 3),
                                  nearest=True)
    np.testing.assert_allclose(turned.numpy(), np.rot90(window, k=-1), atol=1e-4)


def test_turned_crops_keep_masks_on_the_image():
    rows, cols = np.mgrid[0:40, 0:60]
    square = ((rows >= 10) & (rows < 30) & (cols >= 20) & (cols < 40)).astype(np.float32)[..., None]
    example = {"image": tf.constant(square * 5.0), "mask": tf.constant(square),
               "fov": tf.ones((40, 60, 1)), "labelled": tf.constant(1.0)}
    for seed in range(8):
        out = crop(example, seed, out_size=(16, 16), scale=0.2, rotation=45.0)
        image, mask = out["image"].numpy(), out["mask"].numpy()
        assert image.shape == (16, 16, 1) and set(np.unique(mask)) <= {0.0, 1.0}
        assert set(np.unique(out["fov"].numpy())) == {1.0}
        # Nearest neighbour picks a pixel whose bilinear weight is >= 1/4.
        assert np.all(image[mask > 0] >= 5.0 / 4)


def test_mirrored_sampler_equals_the_projective_transform_op():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 10, size=(50, 40, 2)), tf.float32)
    mask = tf.constant(rng.integers(0, 2, size=(50, 40, 1)), tf.float32)
    centre, angle = tf.constant([25.3, 19.6]), tf.constant(0.3)
    no_displacement = tf.zeros((20, 24, 2))
    for tensor, nearest in ((image, False), (mask, True)):
        op = augment.rotated_crop(tensor, centre, angle, spacing=1.1, out_size=(20, 24), nearest=nearest)
        ours = augment.rotated_crop(tensor, centre, angle, spacing=1.1, out_size=(20, 24), nearest=nearest,
                                    displacement=no_displacement)
        np.testing.assert_allclose(ours.numpy(), op.numpy(), atol=1e-4)
    # Beyond the edges: (d c b a | a b c d | d c b a), whole pixels.
    rows = tf.constant([[-1.0, -3.0, 0.0, 50.0, 51.0, 152.0]])
    cols = tf.zeros_like(rows)
    column = image.numpy()[:, 0, 0]
    read = augment.sample_mirrored(image[..., :1], rows, cols, nearest=False).numpy()[0, :, 0]
    np.testing.assert_allclose(read, column[[0, 2, 0, 49, 48, 47]], atol=1e-5)


def test_elastic_crops_bend_smoothly_and_keep_masks_on_the_image():
    rows, cols = np.mgrid[0:120, 0:120].astype(np.float32)
    example = {"image": tf.constant(np.stack([rows, cols], -1)),  # each pixel holds its position
               "mask": tf.constant(np.round(rows)[..., None]), "fov": tf.ones((120, 120, 1)),
               "labelled": tf.constant(1.0)}
    straight = crop(example, 3, out_size=(32, 32))
    bent = crop(example, 3, out_size=(32, 32), elastic=2.0, elastic_spacing=8)
    assert bent["image"].shape == (32, 32, 2)
    moved = bent["image"].numpy() - straight["image"].numpy()  # same centre: the displacements
    assert 0.8 < np.std(moved) < 4.0
    # Smooth: neighbours move alike (independent per-pixel noise would give sqrt(2) x the std).
    assert np.std(np.diff(moved, axis=0)) < 0.4 * np.std(moved)
    assert np.std(np.diff(moved, axis=1)) < 0.4 * np.std(moved)
    # The mask (here = row index) is read at the nearest pixel of the image's sample point.
    np.testing.assert_array_equal(bent["mask"].numpy()[..., 0], np.round(bent["image"].numpy()[..., 0]))
    again = crop(example, 3, out_size=(32, 32), elastic=2.0, elastic_spacing=8)
    np.testing.assert_array_equal(again["image"].numpy(), bent["image"].numpy())
    with pytest.raises(ValueError, match="elastic_spacing must be >= 1"):
        crop(example, 3, out_size=(32, 32), elastic=2.0, elastic_spacing=0)


def test_drive_augmentation_is_identical_eagerly_and_inside_dataset_map():
    config = drive.get_config("cross_camera")  # with the any-angle rotation and zoom
    config.augment.crop_size = (16, 16)
    example = disc_example()
    seeds = [tf.constant([seed, 0], tf.int64) for seed in range(4)]
    eager = [augment.augment_example(example, seed, config.augment) for seed in seeds]
    mapped = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
        lambda seed: augment.augment_example(example, seed, config.augment))
    for expected, got in zip(eager, mapped):
        assert set(got) == {"image", "mask", "fov", "labelled"} and got["image"].shape == (16, 16, 1)
        np.testing.assert_allclose(got["image"].numpy(), expected["image"].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(got["mask"].numpy(), expected["mask"].numpy())
        np.testing.assert_array_equal(got["fov"].numpy(), expected["fov"].numpy())


@pytest.fixture
def patch_config(tfds_dir):
    config = drive.get_config()
    config.dataset.data_dir = tfds_dir
    config.augment.crop_size = (32, 32)
    config.augment.patches_per_image = 3
    return config


def test_patch_batches_sample_inside_the_fov_and_resume(drive_dummy_builder, patch_config):
    patch_config.augment.update(rotation=0.0, scale=0.0)  # the centre then stays at pixel (16, 16)
    batches = list(itertools.islice(pipeline.train_batches(drive_dummy_builder, patch_config, local_batch_size=2,
                                                           start_step=0), 5))
    assert batches[0]["image"].shape == (2, 32, 32, 1) and batches[0]["fov"].shape == (2, 32, 32, 1)
    assert all(batch["fov"][:, 16, 16, 0].all() for batch in batches)
    # 2 train images x 3 patches = 6 per epoch: step 4 is in the second epoch.
    resumed = next(pipeline.train_batches(drive_dummy_builder, patch_config, local_batch_size=2, start_step=4))
    np.testing.assert_array_equal(resumed["image"], batches[4]["image"])
    np.testing.assert_array_equal(resumed["fov"], batches[4]["fov"])


def test_an_epoch_repeats_each_image_patches_per_image_times(drive_dummy_builder, patch_config):
    patch_config.augment.update(crop_size=None, rotation=0.0, scale=0.0, hflip=False, vflip=False,
                                rot90=False, brightness=0.0, contrast=0.0)
    epoch = next(pipeline.train_batches(drive_dummy_builder, patch_config, local_batch_size=6, start_step=0))
    fingerprints = [image.tobytes() for image in epoch["image"]]
    assert sorted(fingerprints.count(f) for f in set(fingerprints)) == [3, 3]
    patch_config.augment.patches_per_image = 1
    with pytest.raises(ValueError, match="gives 2 examples per epoch for this process, fewer than its batch of 6"):
        next(pipeline.train_batches(drive_dummy_builder, patch_config, local_batch_size=6, start_step=0))


def test_model_input_shape_counts_the_preprocessed_channels(drive_dummy_builder, patch_config):
    assert pipeline.model_input_shape(drive_dummy_builder, patch_config) == (32, 32, 1)
    patch_config.augment.crop_size = None
    patch_config.input.update(channel="all", clahe_clip=0.0)
    assert pipeline.model_input_shape(drive_dummy_builder, patch_config) == (584, 565, 3)
