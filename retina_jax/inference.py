"""Probability maps of whole images: in one pass, or by overlapping tiles, with flip TTA.

Usage:
  predict = inference.make_predictor(model, config.inference)
  probabilities = jax.jit(predict)(variables, images)   # (B,H,W,C) -> (B,H,W,1), any H and W

Sliding-window prediction (nnU-Net's scheme) cuts each image into `tile_size` square tiles
that overlap by `overlap` of a tile, predicts `tile_batch` tiles per model call (so memory
depends on the tile batch, not on the image size), weights every tile's probabilities by a
Gaussian centred on the tile (borders, where a convolution sees padding instead of context,
count least) and divides by the summed weights. Images smaller than a tile are zero-padded and
cropped back. Flip test-time augmentation averages the probabilities of the image mirrored
left-right, up-down and both ways with those of the image itself (`flip_views` 4), or of the
image and its left-right mirror only (`flip_views` 2: half the model calls); transpose TTA also averages
in the transposed image's (rows and columns swapped), so that both together average over all 8
rotations and reflections of a square (the dihedral group; 2x the model calls of flips alone).

`scale` resamples: the model sees each image resized by that factor (bilinear) and its
probabilities are resized back, so that metrics and saved maps keep the image's own resolution.
A model trained at one camera's resolution sees another's vessels at the widths it learned
(DRIVE -> CHASE_DB1: 0.6, the ratio of their field-of-view diameters; README, DRIVE).
`scale_tta` averages over several such views: the probabilities of the image resized by each
of its factors (relative to `scale`), each resized back (multi-scale test-time augmentation).
`config.input.fov_diameter` chooses that factor from the images themselves: the field-of-view
diameter the model was trained at over the median FOV width of the split evaluated
(`scale_to_fov`; per image in `--mode=predict`). Training draws its crops at the same scale
(`data.augment`'s `resolution`), so evaluation shows a model its training resolution.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# (variables, images (B,H,W,C)) -> probabilities (B,H,W,1)
Predict = Callable[[dict, jax.Array], jax.Array]

METHODS = ("whole", "sliding_window")
# Axes of (B,H,W,C) each view mirrors: itself, left-right, up-down, both (nnU-Net's 2-D mirroring).
# Flip TTA with n views uses the first n.
FLIP_AXES = ((), (2,), (1,), (1, 2))
FLIP_VIEWS = (2, 4)
# Gaussian sigma as a fraction of the tile size (nnU-Net's 1/8).
SIGMA_SCALE = 0.125
# A field-of-view-derived scale is rounded to a multiple of this: a camera's FOV widths differ
# by a few pixels (DRIVE: 536-541), which should neither resample a split of the training
# camera (1.007 -> 1.0) nor compile another program per image; the vessel configs train with
# zooms of up to 10%, so a 2.5% rounding error stays inside what the model has seen.
FOV_SCALE_STEP = 0.05


def model_probabilities(model) -> Predict:
    """The model's sigmoid probabilities (inference mode: batch-norm running statistics)."""
    def predict(variables, images):
        return jax.nn.sigmoid(model.apply(variables, images, train=False))
    return predict


def with_flip_tta(predict: Predict, views: int = 4) -> Predict:
    """`predict` averaged over the first `views` (2 or 4) mirror images of its input in
    `FLIP_AXES`, mirrored back (one model call on a `views`x batch)."""
    if views not in FLIP_VIEWS:
        raise ValueError(f"config.inference.flip_views must be one of {FLIP_VIEWS}, got {views!r}.")
    flip_axes = FLIP_AXES[:views]

    def predict_mirrored(variables, images):
        mirrored = jnp.concatenate([jnp.flip(images, axes) if axes else images for axes in flip_axes])
        probabilities = jnp.split(predict(variables, mirrored), views)
        return sum(jnp.flip(part, axes) if axes else part
                   for part, axes in zip(probabilities, flip_axes)) / views
    return predict_mirrored


def with_transpose_tta(predict: Predict) -> Predict:
    """`predict` averaged over its input and the input transposed (H and W swapped), the latter
    transposed back; two model calls, so images need not be square."""
    def predict_transposed(variables, images):
        transposed = predict(variables, jnp.swapaxes(images, 1, 2))
        return (predict(variables, images) + jnp.swapaxes(transposed, 1, 2)) / 2
    return predict_transposed


def at_scale(predict: Predict, scale: float) -> Predict:
    """`predict` applied to its input resized by `scale` (bilinear), its probabilities resized
    back to the input's height and width."""
    if scale <= 0:
        raise ValueError(f"config.inference.scale must be positive, got {scale}.")

    def predict_resampled(variables, images):
        batch, height, width, channels = images.shape
        scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
        probabilities = predict(variables, jax.image.resize(images, (batch, *scaled_size, channels), "linear"))
        return jax.image.resize(probabilities, (batch, height, width, probabilities.shape[-1]), "linear")
    return predict_resampled


def at_scales(predict: Predict, scales) -> Predict:
    """`predict` averaged over its input resized by each of `scales` (`at_scale`; a factor of 1
    runs `predict` on the input as it is)."""
    views = [predict if scale == 1 else at_scale(predict, scale) for scale in scales]
    if len(views) == 1:
        return views[0]

    def predict_multiscale(variables, images):
        return sum(view(variables, images) for view in views) / len(views)
    return predict_multiscale


def fov_width(fov: np.ndarray) -> int:
    """The field of view's width in pixels: the columns of an (H, W, 1) mask that hold any of
    it. Its diameter, also where the camera cuts the FOV disc at the top and bottom."""
    return int(np.count_nonzero(np.any(np.asarray(fov)[..., 0] > 0.5, axis=0)))


def scale_to_fov(fov_diameter: float, fov_widths, *, source: str) -> float:
    """The factor that brings the median of `fov_widths` (pixels) to `fov_diameter`, rounded to
    a multiple of FOV_SCALE_STEP; `source` names the images in errors."""
    widths = np.asarray(fov_widths, np.float64)
    if widths.size == 0 or np.median(widths) <= 0:
        raise ValueError(f"config.input.fov_diameter={fov_diameter} scales images by their field of "
                         f"view, but {source} has no field-of-view pixels.")
    steps = round(float(fov_diameter / np.median(widths)) / FOV_SCALE_STEP)
    return round(steps * FOV_SCALE_STEP, 6)  # 12 * 0.05 is 0.6000000000000001


def check_scale_settings(config) -> None:
    """`config` sets at most one of `inference.scale` and `input.fov_diameter`."""
    scale, fov_diameter = config.inference.scale, config.input.fov_diameter
    if fov_diameter < 0:
        raise ValueError(f"config.input.fov_diameter must be >= 0 (0: off), got {fov_diameter}.")
    if fov_diameter and scale != 1:
        raise ValueError(f"config.inference.scale={scale} and config.input.fov_diameter={fov_diameter} "
                         "both choose the scale: set one (the other to 1.0 / 0).")


def tile_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """First pixel of each tile along an axis of `length` >= `tile_size` pixels: every `stride`
    pixels, the last tile flush with the end (so the tiles cover the axis, the last overlapping
    its neighbour more when the stride does not divide the axis)."""
    if length <= tile_size:
        return [0]
    return list(range(0, length - tile_size, stride)) + [length - tile_size]


def gaussian_importance(tile_size: int) -> np.ndarray:
    """(tile, tile) float32 weights, 1 at the centre falling to exp(-8) at the edge midpoints
    (sigma = tile / 8); never 0, so every pixel a tile covers has a weight."""
    offsets = np.arange(tile_size) + 0.5 - tile_size / 2
    profile = np.exp(-0.5 * (offsets / (SIGMA_SCALE * tile_size)) ** 2)
    weights = np.outer(profile, profile)
    return (weights / weights.max()).astype(np.float32)


def sliding_window(predict: Predict, variables: dict, images: jax.Array, *, tile_size: int,
                   overlap: float, tile_batch: int) -> jax.Array:
    """(B,H,W,C) images -> (B,H,W,1) Gaussian-blended probabilities of overlapping tiles.

    `predict` sees (B * n, tile_size, tile_size, C) batches, n <= `tile_batch` tiles of every
    image at a time, inside one `lax.scan` (one compiled model call for any image size).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"Tile overlap must be in [0, 1), got {overlap}.")
    batch, height, width, channels = images.shape
    padded_height, padded_width = max(height, tile_size), max(width, tile_size)
    images = jnp.pad(images, ((0, 0), (0, padded_height - height), (0, padded_width - width), (0, 0)))
    stride = max(1, round(tile_size * (1 - overlap)))
    corners = np.array([(top, left) for top in tile_starts(padded_height, tile_size, stride)
                        for left in tile_starts(padded_width, tile_size, stride)], np.int32)
    weights = gaussian_importance(tile_size)
    # The tiles are fixed by the shapes, so the blending denominator is a constant.
    coverage = np.zeros((padded_height, padded_width), np.float32)
    for top, left in corners:
        coverage[top:top + tile_size, left:left + tile_size] += weights
    tile_batch = min(tile_batch, len(corners))
    num_chunks = -(-len(corners) // tile_batch)
    padding = num_chunks * tile_batch - len(corners)
    # The last chunk is filled up with copies of the last tile, weighted 0.
    keep = np.concatenate([np.ones(len(corners)), np.zeros(padding)]).astype(np.float32)
    corners = np.concatenate([corners, np.repeat(corners[-1:], padding, axis=0)])

    def cut(corner):
        return jax.lax.dynamic_slice(images, (0, corner[0], corner[1], 0),
                                     (batch, tile_size, tile_size, channels))

    def add_chunk(total, chunk):
        chunk_corners, chunk_keep = chunk
        tiles = jnp.swapaxes(jax.vmap(cut)(chunk_corners), 0, 1)  # (B, n, tile, tile, C)
        probabilities = predict(variables, tiles.reshape(-1, tile_size, tile_size, channels))
        weighted = (probabilities.reshape(batch, tile_batch, tile_size, tile_size)
                    * weights * chunk_keep[None, :, None, None])

        def add_tile(index, total):
            top, left = chunk_corners[index, 0], chunk_corners[index, 1]
            window = jax.lax.dynamic_slice(total, (0, top, left), (batch, tile_size, tile_size))
            return jax.lax.dynamic_update_slice(total, window + weighted[:, index], (0, top, left))

        return jax.lax.fori_loop(0, tile_batch, add_tile, total), None

    total, _ = jax.lax.scan(
        add_chunk, jnp.zeros((batch, padded_height, padded_width), jnp.float32),
        (corners.reshape(num_chunks, tile_batch, 2), keep.reshape(num_chunks, tile_batch)))
    return (total / coverage)[:, :height, :width, None]


def make_predictor(model, config, scale: float | None = None) -> Predict:
    """(variables, images) -> probabilities as `config` (the config's `inference` block) says:
    `method` "whole" (one model call per batch) or "sliding_window" (`tile_size`, `overlap`,
    `tile_batch`), with `flip_tta` (`flip_views` mirror images) and `transpose_tta`, on the
    images resized by `scale`
    (`config.scale` when None; the caller's `scale_to_fov` with `config.input.fov_diameter`), or
    averaged over the images resized by `scale` times each factor of `scale_tta`."""
    scale = config.scale if scale is None else scale
    if any(factor <= 0 for factor in config.scale_tta):
        raise ValueError(f"config.inference.scale_tta must hold positive factors, got {tuple(config.scale_tta)}.")
    predict = model_probabilities(model)
    if config.flip_tta:
        predict = with_flip_tta(predict, config.flip_views)
    if config.transpose_tta:
        predict = with_transpose_tta(predict)
    if config.method == "sliding_window":
        predict = functools.partial(sliding_window, predict, tile_size=config.tile_size,
                                    overlap=config.overlap, tile_batch=config.tile_batch)
    elif config.method != "whole":
        raise ValueError(f"config.inference.method must be one of {METHODS}, got {config.method!r}.")
    return at_scales(predict, [scale * factor for factor in config.scale_tta] or [scale])
