"""Bad input: what a user's image and mask files must be, and what happens when they are not.

Every builder, the generic `image_folder` dataset and `--mode=predict` read a user's files
through these functions, so that a bad file always fails the same way: a `BadFileError` (a
ValueError) naming the file and what was expected, and nothing half-written is kept. Where
the config asks for it (`skip_bad_files`), the file is left out instead and listed in a
report (`skipped.csv`: file, reason).

The rules, one principle: a conversion that loses nothing is made, one that would lose or
invent information is an error.
  unreadable path     missing (or a broken link), a folder, permission denied: error
  corrupt / truncated whatever PIL cannot decode to the end: error
  bit depth           16-bit and float images: error (8-bit grey or colour expected)
  grey where colour   converted (R = G = B)
  colour where grey   converted when R = G = B, else error
  alpha channel       dropped when every pixel is opaque, else error (what lies under a
                      transparent pixel is arbitrary)
  palette, CMYK, ...  converted to RGB (palette with transparency: as an alpha channel)
  binary masks        0 = background and one foreground value ({0, 1}, {0, 255}, black and one
                      colour); anything else, e.g. a JPEG-saved mask or a label map, is an error
                      naming the values found (label maps, such as Duke's region ids, are read
                      by the builders that expect them, without this check)
  mask size           the size of its image, else an error naming both files and both sizes

Usage:
  pixels = validate.decode_image(path)                   # (H, W) or (H, W, 3) uint8
  validate.check_binary_mask(path, pixels)
  for key, features in validate.good_examples(builder, cases, make_example): ...

`good_examples` also PNG-encodes the builder's image features itself, with PIL at zlib level 1:
TFDS's own encoding of an array (tf.io.encode_png) took two thirds of the time of preparing
IDRiD (0.11-0.14 s of ~0.2 s an image), PIL 0.03 s, and PIL's files are no larger (224.6 KB
against 232.6 KB, 20 IDRiD images). PNG is lossless: the prepared data decode to the same
pixels either way.
"""
import io
from typing import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, UnidentifiedImageError

# PIL modes of 16-bit and floating-point images (the I;16 family and 32-bit I and F).
HIGH_DEPTH_MODE_PREFIXES = ("I", "F")
MODES_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
SKIPPED_COLUMNS = ["file", "reason"]
PNG_COMPRESS_LEVEL = 1


class BadFileError(ValueError):
    """A user's file is unreadable or not what was expected; `path` names it and the message
    (which names it too) says what was expected."""

    def __init__(self, path, message: str):
        super().__init__(message)
        self.path = str(path)


def list_folder(folder: epath.Path) -> list[epath.Path]:
    """The entries of `folder`, sorted; a folder that cannot be listed is an error naming it."""
    try:
        return sorted(epath.Path(folder).iterdir())
    except PermissionError as error:
        raise BadFileError(folder, f"{folder} cannot be listed: permission denied ({error}).") from error
    except NotADirectoryError as error:
        raise BadFileError(folder, f"{folder} is a file, not a folder.") from error


def read_bytes(path: epath.Path) -> bytes:
    """The bytes of `path`; a missing, unreadable or non-file path is an error naming it."""
    try:
        return epath.Path(path).read_bytes()
    except PermissionError as error:
        raise BadFileError(path, f"{path} cannot be read: permission denied ({error}).") from error
    except IsADirectoryError as error:
        raise BadFileError(path, f"{path} is a folder, not an image file.") from error
    except FileNotFoundError as error:
        raise BadFileError(path, f"{path} does not exist (a broken link?).") from error
    except OSError as error:
        raise BadFileError(path, f"{path} cannot be read ({error}).") from error


def decode_image(path: epath.Path) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8 pixels of the image file `path`, decoded to the end
    (a truncated file is an error), converted only where nothing is lost (module docstring)."""
    data = read_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return eight_bit_pixels(image, path)
    except UnidentifiedImageError as error:
        raise BadFileError(path, f"{path} is not a readable image (no image format recognised in its "
                                 f"{len(data)} bytes: empty, cut short, or not an image).") from error
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadFileError(path, f"{path} is not a readable image ({error}).") from error


def eight_bit_pixels(image: Image.Image, path) -> np.ndarray:
    """The decoded `image` as 8-bit grey (H, W) or RGB (H, W, 3), or an error naming `path`."""
    if image.mode.startswith(HIGH_DEPTH_MODE_PREFIXES):
        raise BadFileError(path, f"{path} is a {image.mode} (16-bit or float) image; expected 8-bit "
                                 "grey or RGB.")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in MODES_WITH_ALPHA:
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            raise BadFileError(path, f"{path} has transparent pixels ({np.count_nonzero(alpha < 255)} "
                                     "with alpha < 255); expected an opaque grey or RGB image "
                                     "(flatten it onto a background first).")
        image = image.convert("L" if image.mode in ("LA", "La") else "RGB")
    if image.mode == "1":
        image = image.convert("L")  # 0 / 255
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def check_binary_mask(path, pixels: np.ndarray) -> None:
    """Raises naming `path` and the values found unless `pixels` (H, W) or (H, W, C) hold 0
    (black) and at most one other value (colour)."""
    values = np.unique(pixels.reshape(-1, pixels.shape[-1]) if pixels.ndim == 3 else pixels.ravel(),
                       axis=0)
    has_background = not np.any(values.reshape(len(values), -1), axis=-1).all()
    if len(values) <= 1 or (len(values) == 2 and has_background):
        return
    shown = [value.tolist() for value in values[:8]]
    raise BadFileError(path, f"{path} is not a binary mask: it holds {len(values)} different values "
                             f"{shown}{'...' if len(values) > 8 else ''}; expected 0 (background) and "
                             "one foreground value, e.g. {0, 1} or {0, 255} (a mask saved as JPEG, "
                             "or a label map, is not binary).")


def check_mask_size(mask_path, mask_shape: tuple[int, ...], image_path, image_shape: tuple[int, ...]) -> None:
    """Raises naming both files and both sizes (width x height) when they differ."""
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        image = f"its image {image_path}" if image_path else "its image"
        raise BadFileError(mask_path, f"Mask {mask_path} is {mask_shape[1]}x{mask_shape[0]} (width x "
                                      f"height) but {image} is {image_shape[1]}x{image_shape[0]}; a "
                                      "mask must have its image's size.")


class SkipsBadFiles:
    """Mixin of the project's TFDS builders: `skip_bad_files=True` leaves out the examples whose
    files are bad (`BadFileError`) and lists them in `skipped_files` (file, reason) instead of
    failing the preparation; `datasets.get_builder` writes that list to a report."""

    def __init__(self, *, skip_bad_files: bool = False, **kwargs):
        self.skip_bad_files = skip_bad_files
        self.skipped_files: list[dict] = []
        super().__init__(**kwargs)


def good_examples(builder, items: Iterable, make_example: Callable) -> Iterator[tuple[str, dict]]:
    """(key, features) = `make_example(item)` of each item, for a builder's `_generate_examples`.

    A bad file raises, or with `builder.skip_bad_files` is listed in `builder.skipped_files`
    and its example left out; a split all of whose examples are bad is an error either way.
    """
    items = list(items)
    num_good, first_skip = 0, len(builder.skipped_files)
    for item in items:
        try:
            key, features = make_example(item)
        except BadFileError as error:
            if not builder.skip_bad_files:
                raise
            builder.skipped_files.append({"file": error.path, "reason": str(error)})
            continue
        num_good += 1
        yield key, png_encoded(features, builder.info.features)
    if items and not num_good:
        raise ValueError(f"All {len(items)} examples of a split of {builder.name} have bad files; "
                         f"the first: {builder.skipped_files[first_skip]['reason']}")


def png_bytes(image: np.ndarray, feature: tfds.features.Image, key: str) -> bytes:
    """`image` as PNG at PNG_COMPRESS_LEVEL, checked as TFDS checks an array for `feature`."""
    expected_shape = tuple(feature.shape)
    matches = image.ndim == len(expected_shape) and all(
        want is None or want == got for want, got in zip(expected_shape, image.shape))
    if image.dtype != feature.np_dtype or not matches:
        raise ValueError(f"Feature {key!r} expects a {np.dtype(feature.np_dtype)} image of shape "
                         f"{expected_shape} (None: any), got {image.dtype} {image.shape}.")
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def png_encoded(features: dict, feature_spec: tfds.features.FeaturesDict) -> dict:
    """`features` with each array for a PNG `tfds.features.Image` of `feature_spec` encoded by
    `png_bytes`; other values as they are, for TFDS to encode."""
    def is_png_image(key: str) -> bool:
        feature = feature_spec[key] if key in feature_spec else None
        return isinstance(feature, tfds.features.Image) and feature.encoding_format in (None, "png")
    return {key: png_bytes(value, feature_spec[key], key)
            if isinstance(value, np.ndarray) and is_png_image(key) else value
            for key, value in features.items()}
