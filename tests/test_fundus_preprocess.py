"""Fundus preprocessing: channel choice, CLAHE, gamma and per-image standardisation, each checked
against hand-computed values (or a loop-by-loop reference), eagerly and inside Dataset.map."""
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import default, drive, edema
from retina_jax.data import preprocess


def clahe_reference(levels: np.ndarray, clip_limit: float, grid: int) -> np.ndarray:
    """CLAHE written out pixel by pixel (the algorithm of preprocess.clahe's docstring)."""
    height, width = levels.shape
    tile_h, tile_w = -(-height // grid), -(-width // grid)
    padded = np.pad(levels, ((0, grid * tile_h - height), (0, grid * tile_w - width)), mode="symmetric")
    mappings = np.zeros((grid, grid, 256))
    for ty in range(grid):
        for tx in range(grid):
            tile = padded[ty * tile_h:(ty + 1) * tile_h, tx * tile_w:(tx + 1) * tile_w]
            hist = np.bincount(tile.ravel(), minlength=256).astype(float)
            limit = max(clip_limit * tile.size / 256, 1.0)
            excess = np.maximum(hist - limit, 0).sum()
            hist = np.minimum(hist, limit) + excess / 256
            mappings[ty, tx] = np.cumsum(hist) / tile.size
    out = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            fy, fx = y / tile_h - 0.5, x / tile_w - 0.5
            y0, x0 = int(np.floor(fy)), int(np.floor(fx))
            wy, wx = fy - y0, fx - x0
            ys = [min(max(y0, 0), grid - 1), min(max(y0 + 1, 0), grid - 1)]
            xs = [min(max(x0, 0), grid - 1), min(max(x0 + 1, 0), grid - 1)]
            value = levels[y, x]
            out[y, x] = ((1 - wy) * ((1 - wx) * mappings[ys[0], xs[0], value] + wx * mappings[ys[0], xs[1], value])
                         + wy * ((1 - wx) * mappings[ys[1], xs[0], value] + wx * mappings[ys[1], xs[1], value]))
    return 255 * out


def grey(values) -> tf.Tensor:
    return tf.constant(np.asarray(values, np.float32)[..., None])


def test_green_channel_and_luminance():
    image = tf.constant([[[100, 200, 50], [0, 10, 255]]], tf.uint8)  # (1, 2, 3)
    np.testing.assert_array_equal(preprocess.fundus_channel(image, "green").numpy()[..., 0], [[200, 10]])
    luminance = preprocess.fundus_channel(image, "luminance").numpy()[..., 0]
    # 0.299 R + 0.587 G + 0.114 B
    np.testing.assert_allclose(luminance, [[29.9 + 117.4 + 5.7, 5.87 + 29.07]], rtol=1e-6)
    assert preprocess.fundus_channel(image, "all").shape == (1, 2, 3)
    grey_image = tf.constant([[[7], [9]]], tf.uint8)  # a grey photograph is its own green channel
    np.testing.assert_array_equal(preprocess.fundus_channel(grey_image, "green").numpy(), [[[7], [9]]])
    with pytest.raises(ValueError, match="config.input.channel must be one of"):
        preprocess.fundus_channel(image, "red")


def test_clahe_of_a_constant_image_is_hand_computed():
    # 8x8 of level 127, 2x2 tiles of 16 pixels: limit = max(2 * 16 / 256, 1) = 1, so 15 of the
    # 16 counts are spread over 256 bins; mapping(127) = (128 * 15 / 256 + 1) / 16 = 0.53125.
    out = preprocess.clahe(grey(np.full((8, 8), 127)), clip_limit=2.0, grid=2).numpy()
    np.testing.assert_allclose(out, np.full((8, 8, 1), 255 * 0.53125), rtol=1e-6)


def test_clahe_without_clipping_is_histogram_equalisation():
    # One tile, no count above the limit: each level maps to its cumulative share of the pixels.
    out = preprocess.clahe(grey([[0, 64], [128, 255]]), clip_limit=256.0, grid=1).numpy()[..., 0]
    np.testing.assert_allclose(out, 255 * np.array([[0.25, 0.5], [0.75, 1.0]]), rtol=1e-6)


@pytest.mark.parametrize("shape, grid", [((12, 10), 3), ((9, 16), 4)])
def test_clahe_matches_the_pixel_loop_reference(shape, grid):
    levels = np.random.default_rng(0).integers(0, 256, shape)
    out = preprocess.clahe(grey(levels), clip_limit=1.5, grid=grid).numpy()[..., 0]
    np.testing.assert_allclose(out, clahe_reference(levels, 1.5, grid), rtol=1e-5, atol=1e-3)


def test_clahe_refuses_small_images_and_an_unknown_channel_count():
    with pytest.raises(ValueError, match="at least 8x8"):
        preprocess.clahe(grey(np.zeros((4, 20))), clip_limit=2.0, grid=8)
    unknown_channels = tf.function(lambda image: preprocess.clahe(image, clip_limit=2.0, grid=2),
                                   input_signature=[tf.TensorSpec((16, 16, None), tf.float32)])
    with pytest.raises(ValueError, match="channel count must be known"):
        unknown_channels.get_concrete_function()


def test_clahe_equalises_each_colour_channel_on_its_own():
    planes = np.random.default_rng(3).integers(0, 256, (3, 24, 20))
    colour = tf.constant(np.stack(planes, axis=-1), tf.float32)
    got = preprocess.clahe(colour, clip_limit=1.5, grid=4).numpy()
    assert got.shape == (24, 20, 3)
    for channel, plane in enumerate(planes):
        np.testing.assert_allclose(got[..., channel], clahe_reference(plane, 1.5, 4), rtol=1e-4, atol=1e-3)


def test_gamma_and_standardisation_are_hand_computed():
    np.testing.assert_allclose(preprocess.adjust_gamma(grey([[63.75, 255.0]]), 2.0).numpy()[..., 0],
                               [[255 * 0.0625, 255.0]])
    image = grey([[10, 20], [30, 200]])
    region = grey([[1, 1], [1, 0]])
    # Over the region: mean 20, std sqrt(200 / 3); the pixel outside it is scaled alike.
    std = np.sqrt(200 / 3)
    np.testing.assert_allclose(preprocess.standardize(image, region).numpy()[..., 0],
                               [[-10 / std, 0.0], [10 / std, 180 / std]], rtol=1e-6)
    np.testing.assert_array_equal(preprocess.standardize(grey([[5, 5]])).numpy(), [[[0.0], [0.0]]])


def fundus_example(seed=0, size=(24, 20)):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size[0], 0:size[1]]
    fov = ((rows - size[0] / 2) ** 2 + (cols - size[1] / 2) ** 2 < (size[1] / 2) ** 2)[..., None]
    return {"image": tf.constant(rng.integers(0, 256, (*size, 3)), tf.uint8),
            "mask": tf.constant(rng.integers(0, 2, (*size, 1)), tf.uint8),
            "fov": tf.constant(fov.astype(np.uint8)), "labelled": tf.constant(True)}


def test_fundus_preprocessing_is_identical_eagerly_and_inside_dataset_map():
    config = drive.get_config().input
    examples = [fundus_example(seed) for seed in range(3)]
    eager = [preprocess.preprocess_example(example, config) for example in examples]
    dataset = tf.data.Dataset.from_tensor_slices({key: tf.stack([e[key] for e in examples])
                                                  for key in examples[0]})
    for expected, got in zip(eager, dataset.map(lambda e: preprocess.preprocess_example(e, config))):
        assert got["image"].shape == (24, 20, 1)
        np.testing.assert_allclose(got["image"].numpy(), expected["image"].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["fov"].numpy(), expected["fov"].numpy())
    fov = eager[0]["fov"].numpy() > 0
    inside = eager[0]["image"].numpy()[fov]
    assert abs(inside.mean()) < 1e-5 and inside.std() == pytest.approx(1.0, rel=1e-4)


def test_colour_fundus_preprocessing_is_identical_eagerly_and_inside_dataset_map():
    config = ml_collections.ConfigDict({**drive.get_config().input, "channel": "all", "clahe_grid": 4})
    example = fundus_example()
    eager = preprocess.preprocess_example(example, config)["image"]
    dataset = tf.data.Dataset.from_tensors(example).map(lambda e: preprocess.preprocess_example(e, config))
    mapped = next(iter(dataset))["image"]
    assert mapped.shape == eager.shape == (24, 20, 3)
    np.testing.assert_allclose(mapped.numpy(), eager.numpy(), rtol=1e-5, atol=1e-5)
    fov = example["fov"].numpy()[..., 0] > 0
    inside = eager.numpy()[fov]  # each channel standardised over the FOV on its own
    np.testing.assert_allclose(inside.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(inside.std(axis=0), 1.0, rtol=1e-4)


def test_fundus_steps_in_order_match_their_composition():
    example = fundus_example()
    config = ml_collections.ConfigDict({**drive.get_config().input, "clahe_grid": 4})
    got = preprocess.preprocess_example(example, config)["image"].numpy()
    grey = preprocess.fundus_channel(example["image"], config.channel)
    expected = preprocess.standardize(preprocess.adjust_gamma(
        preprocess.clahe(grey, clip_limit=2.0, grid=4), 1 / 1.2), example["fov"])
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("config", [edema.get_config(), default.get_config()])
def test_dataset_normalisation_is_unchanged_for_grey_datasets(config):
    image = tf.constant(np.arange(12, dtype=np.uint8).reshape(3, 4, 1) * 20)
    example = {"image": image, "mask": tf.zeros((3, 4, 1), tf.uint8)}
    got = preprocess.preprocess_example(example, config.input)
    np.testing.assert_array_equal(
        got["image"].numpy(),
        ((tf.cast(image, tf.float32) / 255.0 - config.input.mean) / config.input.std).numpy())
    assert "fov" not in got


def test_unknown_standardisation_is_named():
    config = ml_collections.ConfigDict({**drive.get_config().input, "standardize": "global"})
    with pytest.raises(ValueError, match="config.input.standardize must be one of"):
        preprocess.preprocess_example(fundus_example(), config)
