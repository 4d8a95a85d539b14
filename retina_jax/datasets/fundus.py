"""What the fundus vessel builders (`drive`, `chase_db1`) share: features and example assembly.

An example is a colour fundus photograph `image` (H,W,3) uint8 (a grey file reads as R=G=B),
the first observer's vessel `mask` (1 = vessel; zeros and `labelled` False when the split has
no annotation), the field-of-view mask `fov` (1 = inside: the DRIVE protocol scores only these
pixels), the second observer's `mask2` with `has_mask2` (zeros and False when there is none),
and the `id` of the case. Vessel and FOV masks must be binary (validate.check_binary_mask) and
of their image's size.

`--mode=predict` on a user's photographs takes each one's FOV from a mask file when given one
(`fov_dir`), else `estimate_fov`: the pixels whose brightest channel exceeds FOV_THRESHOLD.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from retina_jax.datasets import image_pairs, validate

# Brightest channel (0-255) above which a pixel is inside the field of view. Against the real
# FOV masks of the first 8 images: DRIVE 99.7% of pixels agree (the misses are dark pixels just
# outside the mask), CHASE_DB1 97.8% (the misses: the mask's darkest rim, inside it).
FOV_THRESHOLD = 15


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    image: epath.Path
    fov: epath.Path
    manual: epath.Path | None   # first observer; None: an unlabelled case
    manual2: epath.Path | None  # second observer, where there is one


def features(image_shape: tuple[int, int, int], **extra) -> tfds.features.FeaturesDict:
    """The fundus features for images of `image_shape` (H, W, 3), plus `extra` ones."""
    mask_shape = (*image_shape[:2], 1)
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=image_shape, dtype=np.uint8),
        "mask": tfds.features.Image(shape=mask_shape, dtype=np.uint8),
        "fov": tfds.features.Image(shape=mask_shape, dtype=np.uint8),
        "mask2": tfds.features.Image(shape=mask_shape, dtype=np.uint8),
        "has_mask2": tfds.features.Scalar(dtype=np.bool_),
        "labelled": tfds.features.Scalar(dtype=np.bool_),
        "id": tfds.features.Text(),
        **extra,
    })


def example(case: Case, image_shape: tuple[int, int, int], dataset: str) -> dict:
    """The features of `case`; raises naming the file when an image is not `image_shape`."""
    image = image_pairs.read_image(case.image, channels=3)
    if image.shape != image_shape:
        raise validate.BadFileError(
            case.image, f"{case.image} is {image.shape[1]}x{image.shape[0]} with {image.shape[2]} "
                        f"channel(s); {dataset} images are {image_shape[1]}x{image_shape[0]} "
                        "(width x height), RGB or grey.")
    size = image_shape[:2]
    empty = np.zeros((*size, 1), np.uint8)

    def mask(path):
        return image_pairs.read_mask(path, size, image_path=case.image) if path else empty

    return {
        "image": image,
        "mask": mask(case.manual),
        "fov": require_fov(mask(case.fov), case.image, f"its mask {case.fov} is all 0"),
        "mask2": mask(case.manual2),
        "has_mask2": case.manual2 is not None,
        "labelled": case.manual is not None,
        "id": case.id,
    }


def require_fov(fov: np.ndarray, image_path, source: str) -> np.ndarray:
    """`fov`; a BadFileError naming `image_path` and `source` (why) when it holds no pixel: such
    an image has nothing to score, to draw patches from, or to standardise over."""
    if not fov.any():
        raise validate.BadFileError(image_path, f"{image_path} has an empty field of view: {source}.")
    return fov


def estimate_fov(image: np.ndarray, threshold: int = FOV_THRESHOLD) -> np.ndarray:
    """(H, W, C) uint8 photograph -> (H, W, 1) uint8 field of view: 1 where the brightest channel
    exceeds `threshold` (the surround of a fundus photograph is black)."""
    return (image.max(axis=-1, keepdims=True) > threshold).astype(np.uint8)
