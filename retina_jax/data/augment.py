"""Paired image + mask augmentation with stateless randomness.

Every op takes a `seed` (shape [2] int) and transforms all spatial keys of the example together
(image, mask and, for fundus photographs, the field-of-view mask `fov`), so the masks stay
aligned with the image; the same seed always gives the same result.
"""
import math

import tensorflow as tf

SPATIAL_KEYS = ("image", "mask", "fov")
# Masks are resampled by nearest neighbour (they stay binary), the image bilinearly.
MASK_KEYS = ("mask", "fov")
# Uniform draws tried per crop centre when it must fall inside the field of view: the FOV covers
# ~70% of a fundus photograph, so all 16 miss with probability 0.3 ** 16 ~ 4e-9.
FOV_CENTRE_CANDIDATES = 16


def _split_seeds(seed: tf.Tensor, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(seed, num=num)


def flip_and_rotate(example: dict, seed: tf.Tensor, *, hflip: bool, vflip: bool,
                    rot90: bool) -> dict:
    """Random horizontal/vertical flips and a random multiple of 90 degrees, on every spatial key.

    Rotation by 90/270 degrees needs square inputs (the batch shape must stay fixed).
    """
    hflip_seed, vflip_seed, rot_seed = tf.unstack(_split_seeds(seed, 3))
    do_hflip = hflip & (tf.random.stateless_uniform([], hflip_seed) < 0.5)
    do_vflip = vflip & (tf.random.stateless_uniform([], vflip_seed) < 0.5)
    quarter_turns = tf.random.stateless_uniform([], rot_seed, 0, 4, dtype=tf.int32) if rot90 else 0

    def transform(tensor):
        tensor = tf.cond(do_hflip, lambda: tf.reverse(tensor, axis=[1]), lambda: tensor)
        tensor = tf.cond(do_vflip, lambda: tf.reverse(tensor, axis=[0]), lambda: tensor)
        return tf.image.rot90(tensor, k=quarter_turns)

    return {key: transform(value) if key in SPATIAL_KEYS else value for key, value in example.items()}


def intensity_jitter(example: dict, seed: tf.Tensor, *, brightness: float, contrast: float) -> dict:
    """image -> image * U(1-contrast, 1+contrast) + U(-brightness, brightness).

    On normalised images the contrast pivots on the dataset mean (0); element-wise only, so the
    result is bit-identical however TensorFlow schedules it (a reduction would not be).
    """
    brightness_seed, contrast_seed = tf.unstack(_split_seeds(seed, 2))
    delta = tf.random.stateless_uniform([], brightness_seed, -brightness, brightness)
    factor = tf.random.stateless_uniform([], contrast_seed, 1.0 - contrast, 1.0 + contrast)
    return {**example, "image": example["image"] * factor + delta}


def _uniform(seed: tf.Tensor, low, high) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, low, high)


def point_inside(region: tf.Tensor, seed: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
    """A uniform random (row, col) point of the box [low, high) whose pixel lies in `region`
    (H,W,1) > 0.5: the first of `FOV_CENTRE_CANDIDATES` uniform draws that does (rejection
    sampling: O(1), where listing the region's pixels would cost a pass over the image per
    crop). When no draw does, the last one."""
    candidates = tf.random.stateless_uniform([FOV_CENTRE_CANDIDATES, 2], seed, low, high)
    pixels = tf.minimum(tf.cast(candidates, tf.int32), tf.shape(region)[:2] - 1)
    inside = tf.gather_nd(region[..., 0], pixels) > 0.5
    first = tf.where(tf.reduce_any(inside), tf.argmax(tf.cast(inside, tf.int32)),
                     tf.cast(FOV_CENTRE_CANDIDATES - 1, tf.int64))
    return candidates[first]


def crop_center(mask: tf.Tensor, seed: tf.Tensor, *, box_size: tf.Tensor,
                positive_fraction: float, region: tf.Tensor | None = None) -> tf.Tensor:
    """(row, col) centre of a crop box of `box_size` (float (2,)) in an image of mask's size.

    With probability `positive_fraction` (and when the mask has any foreground) the box is put
    around a random foreground pixel, jittered by up to a quarter of the box so that the lesion
    is not always in the middle; otherwise anywhere, or at a random pixel of `region` (H,W,1)
    when given (the field of view: patches are drawn inside it). The centre is then clamped so
    that the box stays inside the image (centred when the box is larger than the image).
    """
    choose_seed, pick_seed, anywhere_seed, jitter_seed = tf.unstack(_split_seeds(seed, 4))
    image_size = tf.cast(tf.shape(mask)[:2], tf.float32)
    low = tf.minimum(box_size / 2, image_size / 2)
    high = tf.maximum(image_size - box_size / 2, image_size / 2)
    if region is None:
        anywhere = tf.random.stateless_uniform([2], anywhere_seed, low, high)
    else:
        anywhere = point_inside(region, anywhere_seed, low, high)
    if not positive_fraction:  # skips listing the foreground pixels (a pass over the image)
        return tf.clip_by_value(anywhere, low, high)
    foreground = tf.where(mask[..., 0] > 0.5)
    num_foreground = tf.shape(foreground, out_type=tf.int64)[0]

    def around_foreground():
        index = tf.random.stateless_uniform([], pick_seed, 0, num_foreground, dtype=tf.int64)
        jitter = tf.random.stateless_uniform([2], jitter_seed, -box_size / 4, box_size / 4)
        return tf.cast(foreground[index], tf.float32) + 0.5 + jitter

    use_foreground = (_uniform(choose_seed, 0.0, 1.0) < positive_fraction) & (num_foreground > 0)
    center = tf.cond(use_foreground, around_foreground, lambda: anywhere)
    return tf.clip_by_value(center, low, high)


def crop_scale_shift(example: dict, seed: tf.Tensor, *, out_size: tuple[int, int] | None,
                     scale: float, shift: float, positive_fraction: float, fill_value: float,
                     rotation: float = 0.0, elastic: float = 0.0, elastic_spacing: int = 16,
                     resolution: float = 1.0) -> dict:
    """Resamples a box of `out_size * zoom / resolution` (zoom log-uniform in [1/(1+scale),
    1+scale]), turned by an angle uniform in [-rotation, rotation] degrees and, when `elastic` >
    0, bent by a smooth random displacement field (`elastic_displacement`), to `out_size` (None:
    the image's own size), on every spatial key. `resolution` is output pixels per image pixel
    at zoom 1: 1.5 trains a model on the images seen 1.5 times as large (it needs `out_size`).

    The box centre comes from `crop_center` (inside the example's `fov` when it has one), then
    moves by up to `shift` x the box size. Without rotation or bending, what the box reaches
    outside the image reads as `fill_value` for the image and 0 for the masks; a turned or bent
    box mirrors the image at its edges instead (its corners leave any tight box). The image is sampled
    bilinearly, the masks by nearest neighbour; with scale = shift = rotation = 0 the crop is a
    slice (exact pixels). The crop must fit in the image unless it is zoomed, shifted or turned.
    """
    if resolution != 1 and out_size is None:
        raise ValueError(f"Crops at resolution {resolution} need an output size: set config.augment.crop_size.")
    zoom_seed, center_seed, shift_seed = tf.unstack(_split_seeds(seed, 3))
    height, width = example["image"].shape[0], example["image"].shape[1]
    out_height, out_width = out_size or (height, width)
    out_extent = tf.constant([out_height, out_width], tf.float32)
    zoom = tf.exp(_uniform(zoom_seed, -tf.math.log1p(scale), tf.math.log1p(scale))) if scale else 1.0
    zoom /= resolution
    box_size = out_extent * zoom
    if "mask" not in example and positive_fraction:
        raise ValueError("config.augment.positive_crop_fraction needs a segmentation mask; this "
                         "dataset's examples have none (set it to 0).")
    # A classification example has no mask: its image's first channel gives the crop geometry.
    geometry = example["mask"] if "mask" in example else example["image"][..., :1]
    center = crop_center(geometry, center_seed, box_size=box_size,
                         positive_fraction=positive_fraction, region=example.get("fov"))
    center += tf.random.stateless_uniform([2], shift_seed, -shift, shift) * box_size if shift else 0.0
    spatial_keys = [key for key in SPATIAL_KEYS if key in example]
    if rotation or elastic:
        angle = (_uniform(tf.random.experimental.stateless_fold_in(seed, 7), -rotation, rotation)
                 if rotation else tf.constant(0.0))
        displacement = (elastic_displacement(tf.random.experimental.stateless_fold_in(seed, 8),
                                             (out_height, out_width), sigma=elastic,
                                             spacing=elastic_spacing) if elastic else None)
        return {**example, **{key: rotated_crop(example[key], center, angle * math.pi / 180.0,
                                                spacing=zoom, out_size=(out_height, out_width),
                                                nearest=key in MASK_KEYS, displacement=displacement)
                              for key in spatial_keys}}
    top_left = tf.floor(center - box_size / 2)
    if not scale and not shift and resolution == 1:  # a window of whole pixels: slice it, exactly
        if out_height > height or out_width > width:
            raise ValueError(f"Crop {out_height}x{out_width} is larger than the {height}x{width} "
                             "images; lower config.augment.crop_size (or zoom/shift to pad).")
        top, left = tf.unstack(tf.cast(top_left, tf.int32))
        return {**example, **{key: example[key][top:top + out_height, left:left + out_width]
                              for key in spatial_keys}}
    spacing = box_size / out_extent
    # Pixel centres of the first and last output samples, as crop_and_resize's normalised box.
    first = top_left + 0.5 * spacing - 0.5
    last = top_left + (out_extent - 0.5) * spacing - 0.5
    image_extent = tf.constant([height - 1, width - 1], tf.float32)
    boxes = tf.concat([first / image_extent, last / image_extent], axis=0)[None]

    def resample(tensor, method, fill):
        crop = tf.image.crop_and_resize(tensor[None], boxes, [0], [out_height, out_width],
                                        method=method, extrapolation_value=fill)
        return tf.cast(crop[0], tensor.dtype)

    return {**example, **{key: resample(example[key], "nearest", 0.0) if key in MASK_KEYS
                          else resample(example[key], "bilinear", fill_value)
                          for key in spatial_keys}}


def elastic_displacement(seed: tf.Tensor, out_size: tuple[int, int], *, sigma: float,
                         spacing: int) -> tf.Tensor:
    """(out_h, out_w, 2) smooth random (row, col) displacements, in output pixels: N(0, sigma)
    at control points `spacing` pixels apart, interpolated bicubically in between (the
    B-spline-grid deformation of nnU-Net / batchgenerators, rather than Simard's smoothed
    per-pixel noise: the same smoothness for a grid of a few dozen draws)."""
    if spacing < 1:
        raise ValueError(f"config.augment.elastic_spacing must be >= 1 pixel, got {spacing}.")
    out_height, out_width = out_size
    grid = (math.ceil(out_height / spacing) + 1, math.ceil(out_width / spacing) + 1, 2)
    control = tf.random.stateless_normal(grid, seed, stddev=sigma)
    return tf.image.resize(control[None], out_size, method="bicubic")[0]


def rotated_crop(tensor: tf.Tensor, center: tf.Tensor, angle: tf.Tensor, *, spacing,
                 out_size: tuple[int, int], nearest: bool,
                 displacement: tf.Tensor | None = None) -> tf.Tensor:
    """(out_h, out_w, C) samples of `tensor` (H,W,C) on a grid centred at `center` ((row, col),
    pixel edges at integers), `spacing` input pixels apart and turned by `angle` radians, each
    output pixel first moved by `displacement` (out_h, out_w, 2) (row, col) output pixels when
    given; the image is mirrored at its edges. Bilinear, or nearest neighbour when `nearest`."""
    out_height, out_width = out_size
    cos, sin = spacing * tf.cos(angle), spacing * tf.sin(angle)
    # Output pixel (x, y) (column, row; centres at integers) maps to the input point
    # (a0 x + a1 y + a2, b0 x + b1 y + b2): rotate about the output centre, then move to `center`.
    out_x, out_y = (out_width - 1) / 2, (out_height - 1) / 2
    in_y, in_x = center[0] - 0.5, center[1] - 0.5
    transform = tf.stack([cos, sin, in_x - cos * out_x - sin * out_y,
                          -sin, cos, in_y + sin * out_x - cos * out_y, 0.0, 0.0])
    if displacement is not None:
        rows, cols = tf.meshgrid(tf.range(out_height, dtype=tf.float32),
                                 tf.range(out_width, dtype=tf.float32), indexing="ij")
        rows, cols = rows + displacement[..., 0], cols + displacement[..., 1]
        source_cols = transform[0] * cols + transform[1] * rows + transform[2]
        source_rows = transform[3] * cols + transform[4] * rows + transform[5]
        return sample_mirrored(tensor, source_rows, source_cols, nearest=nearest)
    resampled = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(tensor, tf.float32)[None], transforms=transform[None],
        output_shape=tf.constant([out_height, out_width], tf.int32), fill_value=0.0,
        interpolation="NEAREST" if nearest else "BILINEAR", fill_mode="REFLECT")
    return tf.cast(resampled[0], tensor.dtype)


def _mirror_index(index: tf.Tensor, length: int) -> tf.Tensor:
    """Integer pixel indices folded into [0, length) as (d c b a | a b c d | d c b a)."""
    folded = tf.math.floormod(index, 2 * length)
    return tf.where(folded >= length, 2 * length - 1 - folded, folded)


def sample_mirrored(tensor: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, *, nearest: bool) -> tf.Tensor:
    """`tensor` (H,W,C) read at the real pixel positions (rows, cols) (each (h, w), centres at
    integers), mirrored at the edges like ImageProjectiveTransformV3's REFLECT: nearest neighbour,
    or bilinear between the four surrounding pixels."""
    height, width = tensor.shape[0], tensor.shape[1]
    values = tf.cast(tensor, tf.float32)

    def read(row_index, col_index):
        indices = tf.stack([_mirror_index(row_index, height), _mirror_index(col_index, width)], -1)
        return tf.gather_nd(values, indices)

    if nearest:
        return tf.cast(read(tf.cast(tf.round(rows), tf.int32), tf.cast(tf.round(cols), tf.int32)),
                       tensor.dtype)
    top, left = tf.floor(rows), tf.floor(cols)
    row_weight, col_weight = (rows - top)[..., None], (cols - left)[..., None]
    top, left = tf.cast(top, tf.int32), tf.cast(left, tf.int32)
    upper = read(top, left) * (1 - col_weight) + read(top, left + 1) * col_weight
    lower = read(top + 1, left) * (1 - col_weight) + read(top + 1, left + 1) * col_weight
    return tf.cast(upper * (1 - row_weight) + lower * row_weight, tensor.dtype)


def speckle(example: dict, seed: tf.Tensor, *, sigma: float, black_level: float) -> dict:
    """Multiplicative noise, the kind OCT has: raw intensity r -> r * (1 + sigma * N(0, 1)).

    Applied to the normalised image, where r is proportional to (image - black_level).
    """
    noise = tf.random.stateless_normal(tf.shape(example["image"]), seed, stddev=sigma)
    image = example["image"]
    return {**example, "image": image + (image - black_level) * noise}


def augment_example(example: dict, seed: tf.Tensor, config, *, black_level: float = 0.0,
                    resolution: float = 1.0) -> dict:
    """Applies the augmentations switched on in `config` (the config's `augment` block), on
    crops at `resolution` (crop_scale_shift).

    `black_level` is what a black pixel is after normalisation: the value of regions a shifted or
    zoomed-out crop brings in from outside the image, and the zero of the speckle noise.
    """
    if (config.crop_size or config.scale or config.shift or config.rotation or config.elastic
            or resolution != 1):
        example = crop_scale_shift(
            example, tf.random.experimental.stateless_fold_in(seed, 1),
            out_size=tuple(config.crop_size) if config.crop_size else None, scale=config.scale,
            shift=config.shift, positive_fraction=config.positive_crop_fraction,
            fill_value=black_level, rotation=config.rotation, elastic=config.elastic,
            elastic_spacing=config.elastic_spacing, resolution=resolution)
    geometry_seed, intensity_seed = tf.unstack(_split_seeds(seed, 2))
    example = flip_and_rotate(example, geometry_seed, hflip=config.hflip, vflip=config.vflip,
                              rot90=config.rot90)
    if config.brightness or config.contrast:
        example = intensity_jitter(example, intensity_seed, brightness=config.brightness,
                                   contrast=config.contrast)
    if config.speckle:
        example = speckle(example, tf.random.experimental.stateless_fold_in(seed, 2),
                          sigma=config.speckle, black_level=black_level)
    return example
