"""Reading image / mask pairs from folders, for every builder whose raw data is image files.

A pair is `images/<stem>.<ext>` and `masks/<stem>.<ext>` with the same stem (extensions may
differ). A mask must be binary (0 and one foreground value, e.g. 0/1 or 0/255) unless it is read
as a label map (`label_map=True`: any value > 0 in any channel is foreground, as for the RGB
region-id masks of Duke DME). Every failure names the file and what was expected (see
validate.py for the rules), before anything is written.

Usage:
  pairs = image_pairs.find_pairs(manual_dir / "images", manual_dir / "masks")
  image = image_pairs.read_image(pairs[0].image, channels=1)        # (H, W, 1) uint8
  mask = image_pairs.read_mask(pairs[0].mask, image.shape[:2], image_path=pairs[0].image)
"""
import dataclasses

import numpy as np
from etils import epath

from retina_jax.datasets import validate

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class Pair:
    stem: str
    image: epath.Path
    mask: epath.Path | None  # None: no ground truth for this image (an unlabelled split)


def image_files(folder: epath.Path) -> dict[str, epath.Path]:
    """stem -> path of every image file in `folder` (not recursive); two files, one stem: error."""
    files = {}
    for path in validate.list_folder(folder):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            continue
        if path.stem in files:
            raise ValueError(f"{folder} holds two images named {path.stem!r}: "
                             f"{files[path.stem].name} and {path.name}; keep one.")
        files[path.stem] = path
    return files


def find_pairs(images_dir: epath.Path, masks_dir: epath.Path | None) -> list[Pair]:
    """The image/mask pairs of two folders, sorted by stem.

    `masks_dir` None (or absent on disk) means an unlabelled set. Raises when a folder is
    missing or empty, or when an image has no mask or a mask no image.
    """
    images_dir = epath.Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"Image folder not found: {images_dir}.")
    images = image_files(images_dir)
    if not images:
        raise ValueError(f"{images_dir} holds no image files (expected {', '.join(IMAGE_EXTENSIONS)}).")
    if masks_dir is None or not epath.Path(masks_dir).is_dir():
        return [Pair(stem, images[stem], None) for stem in sorted(images)]
    masks = image_files(epath.Path(masks_dir))
    without_mask = sorted(set(images) - set(masks))
    without_image = sorted(set(masks) - set(images))
    if without_mask or without_image:
        raise ValueError(
            f"Images and masks do not pair up by file name in {images_dir} / {masks_dir}: "
            f"images without a mask {without_mask[:5]}{'...' if len(without_mask) > 5 else ''}, "
            f"masks without an image {without_image[:5]}{'...' if len(without_image) > 5 else ''}.")
    return [Pair(stem, images[stem], masks[stem]) for stem in sorted(images)]


def read_image(path: epath.Path, channels: int) -> np.ndarray:
    """(H, W, channels) uint8. Grey files read as 1 channel, or as R=G=B when 3 are asked for;
    colour files read as 1 channel only when R=G=B."""
    pixels = validate.decode_image(epath.Path(path))
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == channels:
        return pixels
    if channels == 3 and pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 1 and (pixels == pixels[..., :1]).all():
        return pixels[..., :1]
    raise validate.BadFileError(path, f"{path} has {pixels.shape[-1]} colour channel(s) with different "
                                      f"values; expected {channels}.")


def read_mask(path: epath.Path, shape: tuple[int, int], *, image_path: epath.Path | None = None,
              label_map: bool = False) -> np.ndarray:
    """(H, W, 1) uint8 in {0, 1}: 1 wherever any channel is > 0. Must be `shape` (H, W), the
    size of its image `image_path`, and binary unless `label_map`."""
    pixels = validate.decode_image(epath.Path(path))
    validate.check_mask_size(path, pixels.shape, image_path, shape)
    if not label_map:
        validate.check_binary_mask(path, pixels)
    foreground = pixels > 0 if pixels.ndim == 2 else (pixels > 0).any(axis=-1)
    return foreground[..., None].astype(np.uint8)
