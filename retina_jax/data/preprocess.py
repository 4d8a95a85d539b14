"""Preprocessing shared by training, evaluation and inference (one function, used everywhere).

Examples are dicts of tensors: `image` (H,W,C) uint8, `mask` (H,W,1) uint8 in {0,1} and an
optional boolean `labelled`. Output: `image` float32 normalised, `mask` float32 in {0,1}, and
`labelled` float32 scalar (1, or 0 for an example without ground truth: losses and metrics skip it).
"""
import tensorflow as tf


def normalize_image(image: tf.Tensor, mean: float, std: float) -> tf.Tensor:
    """uint8 grey levels -> float32 (image / 255 - mean) / std."""
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def preprocess_example(example: dict, *, mean: float, std: float) -> dict:
    labelled = tf.cast(example["labelled"], tf.float32) if "labelled" in example else tf.constant(1.0)
    return {
        "image": normalize_image(example["image"], mean, std),
        "mask": tf.cast(example["mask"] > 0, tf.float32),
        "labelled": labelled,
    }
