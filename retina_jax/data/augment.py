"""Paired image + mask augmentation with stateless randomness.

Every op takes a `seed` (shape [2] int) and transforms all spatial keys of the example together,
so the mask stays aligned with the image; the same seed always gives the same result.
"""
import tensorflow as tf

SPATIAL_KEYS = ("image", "mask")


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


def augment_example(example: dict, seed: tf.Tensor, config) -> dict:
    """Applies the augmentations switched on in `config` (the config's `augment` block)."""
    geometry_seed, intensity_seed = tf.unstack(_split_seeds(seed, 2))
    example = flip_and_rotate(example, geometry_seed, hflip=config.hflip, vflip=config.vflip,
                              rot90=config.rot90)
    if config.brightness or config.contrast:
        example = intensity_jitter(example, intensity_seed, brightness=config.brightness,
                                   contrast=config.contrast)
    return example
