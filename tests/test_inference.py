"""Sliding-window inference and flip / transpose TTA: exact on pixel-wise predictors, hand-computed blending,
any image size, and a model that only ever sees tile batches of the configured size."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from retina_jax import inference
from retina_jax.data import pipeline
from retina_jax.predict import image_scale


def pixelwise(variables, images):
    """A 'model' whose output at a pixel depends on that pixel only (so tiling cannot change it)."""
    return jax.nn.sigmoid(images[..., :1] * variables["w"] + variables["b"])


VARIABLES = {"w": jnp.float32(1.5), "b": jnp.float32(-0.25)}


def test_tile_starts_cover_the_axis_with_the_last_tile_flush():
    assert inference.tile_starts(10, 4, 3) == [0, 3, 6]
    assert inference.tile_starts(11, 4, 3) == [0, 3, 6, 7]
    assert inference.tile_starts(4, 4, 3) == [0]
    assert inference.tile_starts(3, 4, 3) == [0]  # smaller than a tile: padded by the caller


def test_gaussian_importance_peaks_at_the_centre_and_never_vanishes():
    weights = inference.gaussian_importance(8)
    assert weights.shape == (8, 8) and weights.max() == 1.0
    np.testing.assert_array_equal(weights[3:5, 3:5], 1.0)          # the 4 central pixels
    np.testing.assert_allclose(weights, weights.T)
    np.testing.assert_allclose(weights, weights[::-1, ::-1])
    # sigma = 1 pixel: the edge pixel's centre is 3.5 from the middle, the centre pixels' 0.5.
    assert weights[0, 3] == pytest.approx(math.exp(-0.5 * 3.5 ** 2) / math.exp(-0.5 * 0.5 ** 2), rel=1e-6)
    assert weights.min() > 0


@pytest.mark.parametrize("shape", [(2, 37, 50, 1), (1, 16, 16, 1), (1, 9, 30, 2)])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_sliding_window_equals_whole_image_for_a_pixelwise_model(shape, overlap):
    images = jax.random.normal(jax.random.key(0), shape)
    tiled = inference.sliding_window(pixelwise, VARIABLES, images, tile_size=16, overlap=overlap,
                                     tile_batch=3)
    assert tiled.shape == (*shape[:3], 1)
    np.testing.assert_allclose(tiled, pixelwise(VARIABLES, images), rtol=1e-5, atol=1e-6)


def test_overlapping_tiles_blend_by_their_gaussian_weights():
    """Width 6, tile 4, stride 2: tiles over columns 0-3 and 2-5; the 'model' predicts each tile's
    mean input everywhere in it, so the blend is visible. Gaussian column weights of a 4-pixel
    tile (sigma 0.5): [e^-4, 1, 1, e^-4] (rows weigh both tiles alike and cancel)."""
    images = jnp.broadcast_to(jnp.arange(6, dtype=jnp.float32), (1, 4, 6))[..., None]

    def tile_mean(variables, tiles):
        return jnp.broadcast_to(tiles.mean(axis=(1, 2, 3), keepdims=True), tiles.shape)

    out = inference.sliding_window(tile_mean, {}, images, tile_size=4, overlap=0.5, tile_batch=1)
    edge = math.exp(-4)
    expected = [1.5, 1.5, (1.5 + 3.5 * edge) / (1 + edge), (1.5 * edge + 3.5) / (edge + 1), 3.5, 3.5]
    np.testing.assert_allclose(out[0, :, :, 0], np.tile(expected, (4, 1)), rtol=1e-6)


def test_the_model_only_sees_batches_of_tile_batch_tiles_whatever_the_image_size():
    seen = []

    def recording(variables, tiles):
        seen.append(tiles.shape)
        return pixelwise(variables, tiles)

    predict = inference.with_flip_tta(recording)
    for height, width in ((40, 64), (200, 230)):
        images = jnp.zeros((2, height, width, 1))
        jax.jit(lambda v, x: inference.sliding_window(predict, v, x, tile_size=16, overlap=0.25,
                                                      tile_batch=3))(VARIABLES, images)
    # 2 images x 3 tiles x 4 mirror images, traced once per image size.
    assert seen == [(24, 16, 16, 1), (24, 16, 16, 1)]


def test_flip_tta_averages_the_four_mirror_images():
    images = jnp.zeros((2, 5, 7, 1))
    # Left-right mirroring turns the ramp r into 1 - r, up-down leaves it: the mean is 1/2.
    np.testing.assert_allclose(inference.with_flip_tta(column_ramp)(VARIABLES, images), 0.5, atol=1e-7)
    images = jax.random.normal(jax.random.key(1), (2, 5, 7, 1))
    np.testing.assert_allclose(inference.with_flip_tta(pixelwise)(VARIABLES, images),
                               pixelwise(VARIABLES, images), rtol=1e-6)


def column_ramp(variables, images):
    """0 at the left edge, 1 at the right: a 'model' that is not symmetric."""
    width = images.shape[2]
    return jnp.broadcast_to(jnp.linspace(0.0, 1.0, width)[None, None, :, None], (*images.shape[:3], 1))


def row_ramp(variables, images):
    """0 at the top edge, 1 at the bottom."""
    height = images.shape[1]
    return jnp.broadcast_to(jnp.linspace(0.0, 1.0, height)[None, :, None, None], (*images.shape[:3], 1))


def test_two_flip_views_average_the_image_and_its_left_right_mirror_only():
    images = jnp.zeros((2, 5, 7, 1))
    np.testing.assert_allclose(inference.with_flip_tta(column_ramp, views=2)(VARIABLES, images), 0.5,
                               atol=1e-7)
    # No up-down mirror among the two views: a row ramp comes back unchanged (4 views: 1/2).
    np.testing.assert_allclose(inference.with_flip_tta(row_ramp, views=2)(VARIABLES, images),
                               row_ramp(VARIABLES, images), atol=1e-7)
    np.testing.assert_allclose(inference.with_flip_tta(row_ramp)(VARIABLES, images), 0.5, atol=1e-7)
    seen = []
    jax.jit(inference.with_flip_tta(lambda v, x: seen.append(x.shape) or column_ramp(v, x),
                                    views=2))(VARIABLES, images)
    assert seen == [(4, 5, 7, 1)]  # one model call on a 2x batch
    with pytest.raises(ValueError, match="flip_views must be one of"):
        inference.with_flip_tta(column_ramp, views=3)


def test_transpose_tta_averages_the_image_and_its_transpose_of_any_shape():
    images = jnp.zeros((2, 5, 7, 1))
    # The transposed image's column ramp, transposed back, runs down the rows.
    expected = (np.linspace(0, 1, 7)[None, :] + np.linspace(0, 1, 5)[:, None]) / 2
    out = inference.with_transpose_tta(column_ramp)(VARIABLES, images)
    assert out.shape == (2, 5, 7, 1)
    np.testing.assert_allclose(out[..., 0], np.broadcast_to(expected, (2, 5, 7)), atol=1e-6)
    images = jax.random.normal(jax.random.key(2), (2, 5, 7, 1))
    np.testing.assert_allclose(inference.with_transpose_tta(pixelwise)(VARIABLES, images),
                               pixelwise(VARIABLES, images), rtol=1e-6)


class LeftNeighbourModel:
    """A 'model' whose logit at a pixel is its left neighbour's value: not symmetric."""

    @staticmethod
    def apply(variables, images, train):
        return jnp.roll(images[..., :1], 1, axis=2) * variables["w"]


def test_flip_and_transpose_tta_average_over_the_8_rotations_and_reflections():
    images = jax.random.normal(jax.random.key(3), (1, 6, 6, 1))
    image = np.asarray(images[0, :, :, 0])
    model_probability = inference.model_probabilities(LeftNeighbourModel())
    views = []
    for turns in range(4):
        for mirrored in (False, True):
            view = np.rot90(image, turns)
            view = view[:, ::-1] if mirrored else view
            out = model_probability(VARIABLES, jnp.asarray(view.copy())[None, :, :, None])
            out = np.asarray(out)[0, :, :, 0]
            out = out[:, ::-1] if mirrored else out
            views.append(np.rot90(out, -turns))
    assert np.ptp(np.stack(views), axis=0).max() > 0.1  # the views do disagree
    predict = inference.make_predictor(LeftNeighbourModel(), ml_collections.ConfigDict(
        {"method": "whole", "flip_tta": True, "flip_views": 4, "transpose_tta": True, "scale": 1.0,
         "scale_tta": ()}))
    np.testing.assert_allclose(predict(VARIABLES, images)[0, :, :, 0], np.mean(views, axis=0), rtol=1e-5)


def test_make_predictor_names_an_unknown_method():
    config = ml_collections.ConfigDict({"method": "tiles", "tile_size": 16, "overlap": 0.25,
                                        "tile_batch": 1, "flip_tta": False,
                                        "transpose_tta": False, "scale": 1.0, "scale_tta": ()})
    with pytest.raises(ValueError, match="config.inference.method must be one of"):
        inference.make_predictor(None, config)
    with pytest.raises(ValueError, match="overlap must be in"):
        inference.sliding_window(pixelwise, VARIABLES, jnp.zeros((1, 8, 8, 1)), tile_size=4,
                                 overlap=1.0, tile_batch=1)


def test_scale_resamples_the_models_view_and_returns_the_images_resolution():
    """The model sees the 37x53 image at 22x32, and the probabilities come back at 37x53; on a
    smooth image, resampling changes a pixel-wise model's output little."""
    seen_shapes = []

    def pixelwise_recording(variables, images):
        seen_shapes.append(images.shape)
        return pixelwise(variables, images)

    rows = jnp.linspace(-1.0, 1.0, 37)[:, None] * jnp.ones((1, 53))
    images = jnp.stack([rows, -rows])[..., None]
    out = inference.at_scale(pixelwise_recording, 0.6)(VARIABLES, images)
    assert seen_shapes == [(2, 22, 32, 1)] and out.shape == (2, 37, 53, 1)
    interior = (slice(None), slice(3, -3), slice(3, -3))
    np.testing.assert_allclose(out[interior], pixelwise(VARIABLES, images)[interior], atol=2e-3)
    with pytest.raises(ValueError, match="scale must be positive, got 0"):
        inference.at_scale(pixelwise, 0)


class PixelwiseModel:
    @staticmethod
    def apply(variables, images, train):
        return images[..., :1] * variables["w"] + variables["b"]


def test_make_predictor_resamples_the_whole_sliding_window_only_at_a_scale_other_than_1():
    images = jax.random.normal(jax.random.key(4), (1, 20, 30, 1))
    settings = {"method": "sliding_window", "tile_size": 8, "overlap": 0.25, "tile_batch": 2,
                "flip_tta": False, "transpose_tta": False, "scale_tta": ()}
    native = inference.make_predictor(PixelwiseModel(), ml_collections.ConfigDict({**settings, "scale": 1.0}))
    np.testing.assert_allclose(native(VARIABLES, images), pixelwise(VARIABLES, images), rtol=1e-6)
    halved = inference.make_predictor(PixelwiseModel(), ml_collections.ConfigDict({**settings, "scale": 0.5}))
    expected = inference.at_scale(pixelwise, 0.5)(VARIABLES, images)  # tiling a pixel-wise model is exact
    np.testing.assert_allclose(halved(VARIABLES, images), expected, rtol=1e-6)
    assert np.abs(np.asarray(expected) - np.asarray(pixelwise(VARIABLES, images))).max() > 0.05  # noise does not survive
    explicit = inference.make_predictor(PixelwiseModel(), ml_collections.ConfigDict({**settings, "scale": 1.0}), 0.5)
    np.testing.assert_allclose(explicit(VARIABLES, images), expected, rtol=1e-6)


class RecordingPixelwiseModel:
    """PixelwiseModel that records the shape of every batch it is shown."""

    def __init__(self):
        self.seen_shapes = []

    def apply(self, variables, images, train):
        self.seen_shapes.append(images.shape)
        return PixelwiseModel.apply(variables, images, train)


def test_scale_tta_averages_the_views_at_each_factor_times_the_scale():
    """At scale 2 with factors (0.5, 1, 1.5) the model sees the 20x30 image at 1x (as it is), 2x
    and 3x, and the result is the mean of those three views, each back at 20x30."""
    images = jax.random.normal(jax.random.key(5), (1, 20, 30, 1))
    model = RecordingPixelwiseModel()
    settings = ml_collections.ConfigDict({"method": "whole", "flip_tta": False, "transpose_tta": False,
                                          "scale": 1.0, "scale_tta": (0.5, 1.0, 1.5)})
    out = inference.make_predictor(model, settings, 2.0)(VARIABLES, images)
    assert model.seen_shapes == [(1, 20, 30, 1), (1, 40, 60, 1), (1, 60, 90, 1)] and out.shape == (1, 20, 30, 1)
    views = [pixelwise(VARIABLES, images), inference.at_scale(pixelwise, 2.0)(VARIABLES, images),
             inference.at_scale(pixelwise, 3.0)(VARIABLES, images)]
    np.testing.assert_allclose(out, np.mean(views, axis=0), rtol=1e-6)
    assert np.abs(np.asarray(views[0]) - np.asarray(views[2])).max() > 0.05  # the views differ
    single = settings.copy_and_resolve_references()
    single.scale_tta = (1.0,)
    np.testing.assert_array_equal(inference.make_predictor(PixelwiseModel(), single)(VARIABLES, images),
                                  pixelwise(VARIABLES, images))
    single.scale_tta = (1.0, 0.0)
    with pytest.raises(ValueError, match=r"scale_tta must hold positive factors, got \(1.0, 0.0\)"):
        inference.make_predictor(PixelwiseModel(), single)


def disc(height: int, width: int, radius: float, centre_row: float) -> np.ndarray:
    rows, columns = np.mgrid[:height, :width]
    inside = (rows - centre_row) ** 2 + (columns - (width - 1) / 2) ** 2 <= radius ** 2
    return inside[..., None].astype(np.uint8)


def test_fov_width_is_the_discs_diameter_also_where_the_camera_cuts_it():
    assert inference.fov_width(disc(60, 81, 20, 30)) == 41  # columns 40 +- 20: 20..60
    cut_at_top_and_bottom = disc(30, 81, 20, 15)  # rows 15 +- 20 overflow the 30-row image
    assert cut_at_top_and_bottom[0].any() and inference.fov_width(cut_at_top_and_bottom) == 41
    assert inference.fov_width(np.zeros((5, 7, 1), np.uint8)) == 0


def test_scale_to_fov_brings_the_median_width_to_the_models_and_rounds_it():
    # DRIVE's 540 px over CHASE_DB1's 919 (0.5876...), whatever one odd image's width.
    assert inference.scale_to_fov(540, [919, 918, 920, 893, 921], source="s") == 0.6
    assert inference.scale_to_fov(540, [536, 536, 537], source="s") == 1.0  # the same camera: as it is
    assert inference.scale_to_fov(919, [540], source="s") == 1.7
    assert inference.scale_to_fov(540, [640], source="s") == 0.85  # 0.84375
    with pytest.raises(ValueError, match="but split 'test' has no field-of-view pixels"):
        inference.scale_to_fov(540, [0, 0], source="split 'test'")


def test_predict_measures_an_images_fov_on_the_mask_the_model_sees():
    fov = np.zeros((10, 10, 1), np.uint8)
    fov[:, :6] = 1  # 6 columns
    config = ml_collections.ConfigDict({"input": {"resize": (4, 4), "fov_diameter": 2.4}})
    # Resized to 4 columns by nearest neighbour (as evaluation resizes the split's masks), the
    # columns sampled are 1, 3, 6 and 8: 2 in the FOV, not 6 x 4 / 10 = 2.4; 2.4 / 2 = 1.2.
    assert inference.fov_width(np.asarray(pipeline.fov_as_seen(fov, config))) == 2
    assert image_scale(fov, config, "image.png") == 1.2
    config.input.resize = ()
    assert image_scale(fov, config, "image.png") == 0.4


def scale_settings(scale: float, fov_diameter: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"inference": {"scale": scale}, "input": {"fov_diameter": fov_diameter}})


def test_scale_and_fov_diameter_are_not_set_together():
    inference.check_scale_settings(scale_settings(0.6, 0))
    inference.check_scale_settings(scale_settings(1.0, 540))
    with pytest.raises(ValueError, match="inference.scale=0.6 and config.input.fov_diameter=540 both"):
        inference.check_scale_settings(scale_settings(0.6, 540))
    with pytest.raises(ValueError, match="input.fov_diameter must be >= 0"):
        inference.check_scale_settings(scale_settings(1.0, -1))
