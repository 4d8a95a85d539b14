"""Preprocessing shared by training, evaluation and inference (one function, used everywhere).

Examples are dicts of tensors: `image` (H,W,C) uint8, `mask` (H,W,1) uint8 in {0,1} and an
optional boolean `labelled`. Output: `image` float32 normalised, `mask` float32 in {0,1}, and
`labelled` float32 scalar (1, or 0 for an example without ground truth: losses and metrics skip it).
"""
import tensorflow as tf

DENOISERS = ("none", "median3")


def normalize_image(image: tf.Tensor, mean: float, std: float) -> tf.Tensor:
    """uint8 grey levels -> float32 (image / 255 - mean) / std."""
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def black_level(mean: float, std: float) -> float:
    """What a black (0) pixel becomes after `normalize_image`: the fill for regions outside an image."""
    return -mean / std


def median3(image: tf.Tensor) -> tf.Tensor:
    """3x3 median filter per channel (edges see zero padding): removes OCT speckle, keeps edges.

    (H,W,C) float -> (H,W,C). Sorting 9 neighbours is exact, so the result does not
    depend on how TensorFlow schedules it.
    """
    channels = tf.shape(image)[-1]
    planes = tf.transpose(image, [2, 0, 1])[..., None]  # (C,H,W,1): patches of one channel each
    patches = tf.image.extract_patches(planes, sizes=[1, 3, 3, 1], strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding="SAME")
    median = tf.sort(patches, axis=-1)[..., 4]
    return tf.reshape(tf.transpose(median, [1, 2, 0]), tf.concat([tf.shape(image)[:2], [channels]], 0))


def denoise(image: tf.Tensor, method: str) -> tf.Tensor:
    if method == "none":
        return image
    if method == "median3":
        return median3(image)
    raise ValueError(f"config.input.denoise must be one of {DENOISERS}, got {method!r}.")


def preprocess_example(example: dict, *, mean: float, std: float, denoise_method: str = "none") -> dict:
    labelled = tf.cast(example["labelled"], tf.float32) if "labelled" in example else tf.constant(1.0)
    return {
        "image": denoise(normalize_image(example["image"], mean, std), denoise_method),
        "mask": tf.cast(example["mask"] > 0, tf.float32),
        "labelled": labelled,
    }
