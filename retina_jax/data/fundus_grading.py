"""Preprocessing of colour fundus photographs for disease grading (Ben Graham's recipe).

Graham's Kaggle DR-detection recipe (2015) makes photographs from different cameras, exposures
and resolutions look alike before a classifier sees them:
  crop_to_retina          cut the black border: bounding box of pixels brighter than a threshold
  scale_to_radius         resize so that the retina has a common radius (its half-width)
  subtract_local_average  4 * image - 4 * GaussianBlur(image, radius / 30) + 128: local contrast,
                          with a flat background at 50% grey
  remove_rim              grey (128) outside 0.9 x the radius, where the blur of the black
                          border leaves a bright ring
  to_square               centre-pad (grey) or centre-crop to a square
Each step is a pure function of uint8 numpy arrays; `grading_preprocess` composes them.

Usage:
  image = grading_preprocess(rgb_uint8)  # (512, 512, 3) uint8, retina radius 256 px
"""
import numpy as np
from PIL import Image, ImageFilter

GREY = 128
# Brightest channel above which a pixel is retina. IDRiD's black border carries JPEG noise up to
# ~20 grey levels, while the retina's edge is brighter than ~50 even in dark photographs.
RETINA_THRESHOLD = 30
# Graham's blur width: radius / 30 keeps lesions and vessels, and removes illumination changes.
BLUR_SIGMA_PER_RADIUS = 1 / 30
RIM_FRACTION = 0.9


def crop_to_retina(image: np.ndarray, threshold: int = RETINA_THRESHOLD) -> np.ndarray:
    """The bounding box of the pixels whose brightest channel exceeds `threshold`.

    Raises ValueError when no pixel does (a black or blank image has no retina to find).
    """
    bright = image.max(axis=-1) > threshold
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"no pixel is brighter than {threshold} grey levels: the image is black, "
                         "not a fundus photograph.")
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def scale_to_radius(image: np.ndarray, radius: int) -> np.ndarray:
    """`image` (cropped to the retina) resized so that its larger side is 2 * `radius`.

    The retina's diameter is the larger side of its bounding box: photographs clip the circular
    field of view at the top and bottom (or the sides), never in both directions.
    """
    height, width = image.shape[:2]
    scale = 2 * radius / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def subtract_local_average(image: np.ndarray, sigma: float) -> np.ndarray:
    """4 * image - 4 * GaussianBlur(image, sigma) + 128, clipped to uint8: flat regions and
    linear gradients become 128, detail at scales below `sigma` is amplified four times."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)))
    contrast = 4 * image.astype(np.int32) - 4 * blurred.astype(np.int32) + GREY
    return np.clip(contrast, 0, 255).astype(np.uint8)


def remove_rim(image: np.ndarray, radius: float) -> np.ndarray:
    """`image` with every pixel farther than `radius` from its centre set to grey (128)."""
    height, width = image.shape[:2]
    rows, cols = np.ogrid[:height, :width]
    outside = (rows - (height - 1) / 2) ** 2 + (cols - (width - 1) / 2) ** 2 > radius ** 2
    return np.where(outside[..., None], np.uint8(GREY), image)


def _fit_axis(image: np.ndarray, axis: int, length: int) -> np.ndarray:
    """`image` centre-cropped or grey-padded along `axis` to `length` pixels."""
    excess = image.shape[axis] - length
    if excess > 0:
        return np.take(image, range(excess // 2, excess // 2 + length), axis=axis)
    padding = [(0, 0)] * image.ndim
    padding[axis] = (-excess // 2, -excess - (-excess // 2))
    return np.pad(image, padding, constant_values=GREY)


def to_square(image: np.ndarray, side: int) -> np.ndarray:
    """`image` centre-cropped or grey-padded (128) to `side` x `side`."""
    return _fit_axis(_fit_axis(image, 0, side), 1, side)


def grading_preprocess(image: np.ndarray, size: int = 512) -> np.ndarray:
    """(H, W, 3) uint8 fundus photograph -> (size, size, 3) uint8, Graham-preprocessed, with the
    retina (radius size / 2) centred on a 50% grey background."""
    radius = size // 2
    retina = scale_to_radius(crop_to_retina(image), radius)
    contrast = subtract_local_average(retina, sigma=radius * BLUR_SIGMA_PER_RADIUS)
    square = to_square(remove_rim(contrast, RIM_FRACTION * radius), 2 * radius)
    if square.shape[0] != size:  # an odd `size`
        square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS))
    return square
