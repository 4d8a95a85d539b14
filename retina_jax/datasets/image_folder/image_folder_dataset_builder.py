"""`image_folder`: a user's own image / mask pairs (OCT, fundus, ...) as a segmentation dataset.

Two layouts under the manual dir (`--config.dataset.manual_dir=PATH`):

  PATH/train/images/*.png  PATH/train/masks/*.png      explicit splits: any of train,
  PATH/validation/images/  PATH/validation/masks/      validation, test; a split without
  PATH/test/images/        [PATH/test/masks/]          masks/ is unlabelled (never scored)

  PATH/images/*.png  PATH/masks/*.png                  one pool: validation = the files whose
                                                       name hashes into 1 of 5 buckets (~20%),
                                                       train = the rest (stable as files are added)

Pairs match by file name (extensions may differ: png, jpg, tif, bmp, gif); a mask must be binary
(0 = background and one foreground value, e.g. 0/1 or 0/255; a JPEG-saved mask is not) and of
its image's size. Every image must have the size and channel count of the first one (grey = 1
channel, colour = 3): the dataset's shape is read from that file, so `get_builder` builds this
dataset through `make_builder`, which names the prepared data after the shape (e.g.
`496x768x1`). A bad file (datasets/validate.py) fails the preparation naming it, or with
`skip_bad_files` is left out and listed in the report `get_builder` writes.

Usage:
  builder = datasets.get_builder("image_folder", manual_dir="/data/my_oct")
  python -m retina_jax.main --config=configs/edema.py --workdir=runs/mine \
      --config.dataset.name=image_folder --config.dataset.manual_dir=/data/my_oct
"""
import dataclasses
import hashlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from retina_jax.datasets import image_pairs, validate

DEFAULT_MANUAL_DIR = ""  # no default: the user's folder must be named
SPLITS = ("train", "validation", "test")
VALIDATION_BUCKETS = 5  # pooled layout: 1 bucket of 5 (by file-name hash) is validation


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    height: int = 0
    width: int = 0
    channels: int = 1


def is_validation(stem: str) -> bool:
    return int(hashlib.sha256(stem.encode()).hexdigest(), 16) % VALIDATION_BUCKETS == 0


def pairs_by_split(manual_dir: epath.Path) -> dict[str, list[image_pairs.Pair]]:
    """split -> its pairs, in either layout (see the module docstring)."""
    split_dirs = [split for split in SPLITS if (manual_dir / split / "images").is_dir()]
    if split_dirs:
        return {split: image_pairs.find_pairs(manual_dir / split / "images", manual_dir / split / "masks")
                for split in split_dirs}
    if not (manual_dir / "images").is_dir():
        raise FileNotFoundError(
            f"{manual_dir} has neither images/ (+ masks/) nor <split>/images/ folders "
            f"(split = {', '.join(SPLITS)}).")
    if not (manual_dir / "masks").is_dir():
        raise FileNotFoundError(f"{manual_dir / 'masks'} not found: a pooled images/ folder needs "
                                f"masks/ beside it (put unlabelled images under test/images/).")
    pairs = image_pairs.find_pairs(manual_dir / "images", manual_dir / "masks")
    splits = {"train": [pair for pair in pairs if not is_validation(pair.stem)],
              "validation": [pair for pair in pairs if is_validation(pair.stem)]}
    return {split: split_pairs for split, split_pairs in splits.items() if split_pairs}


def first_image_shape(manual_dir: epath.Path, skip_bad_files: bool) -> tuple[int, int, int]:
    """(H, W, C) of the folder's first image (its first readable one, with `skip_bad_files`)."""
    for split_pairs in pairs_by_split(manual_dir).values():
        for pair in split_pairs:
            try:
                pixels = validate.decode_image(pair.image)
            except validate.BadFileError:
                if skip_bad_files:
                    continue
                raise
            return (*pixels.shape[:2], 1 if pixels.ndim == 2 else 3)
    raise ValueError(f"{manual_dir} holds no readable image.")


def shape_config(manual_dir, skip_bad_files: bool = False) -> ImageFolderConfig:
    """The builder config for the size and channel count of the folder's first image."""
    height, width, channels = first_image_shape(epath.Path(manual_dir), skip_bad_files)
    return ImageFolderConfig(name=f"{height}x{width}x{channels}", height=height, width=width,
                             channels=channels,
                             description=f"{height}x{width} images with {channels} channel(s).")


def make_builder(manual_dir, data_dir: str, skip_bad_files: bool = False) -> "Builder":
    return Builder(config=shape_config(manual_dir, skip_bad_files), data_dir=data_dir,
                   skip_bad_files=skip_bad_files)


def example(pair: image_pairs.Pair, shape: tuple[int, int, int]) -> dict:
    """The features of `pair`, whose image must be `shape` (the dataset's, from its first image)."""
    image = image_pairs.read_image(pair.image, channels=shape[2])
    if image.shape != shape:
        raise validate.BadFileError(
            pair.image, f"{pair.image} is {image.shape[1]}x{image.shape[0]} with {image.shape[2]} "
                        f"channel(s); this dataset's images are {shape[1]}x{shape[0]} with "
                        f"{shape[2]} (taken from its first image). Resize the images to one size.")
    labelled = pair.mask is not None
    mask = (image_pairs.read_mask(pair.mask, shape[:2], image_path=pair.image) if labelled
            else np.zeros((*shape[:2], 1), np.uint8))
    return {"image": image, "mask": mask, "labelled": labelled, "id": pair.stem}


class Builder(validate.SkipsBadFiles, tfds.core.GeneratorBasedBuilder):
    """Image / mask pairs from a folder; the shape comes from the builder config."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Folder layouts with explicit splits or one hashed pool."}
    BUILDER_CONFIGS = [ImageFolderConfig(name="64x64x1", height=64, width=64, channels=1)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put image/mask pairs (same file name) under <dir>/images/ and <dir>/masks/, or under "
        "<dir>/<split>/images/ and <dir>/<split>/masks/ for split in train, validation, test "
        "(masks optional for test). All images must share one size and channel count; masks "
        "are binary (0 = background, one foreground value such as 1 or 255).")

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        shape = (config.height, config.width, config.channels)
        return tfds.core.DatasetInfo(
            builder=self,
            description="A user's image / mask pairs (mask 1 = foreground).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=shape, dtype=np.uint8),
                "mask": tfds.features.Image(shape=(*shape[:2], 1), dtype=np.uint8),
                "labelled": tfds.features.Scalar(dtype=np.bool_),
                "id": tfds.features.Text(),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {split: self._generate_examples(pairs)
                for split, pairs in pairs_by_split(epath.Path(dl_manager.manual_dir)).items()}

    def _generate_examples(self, pairs: list[image_pairs.Pair]):
        config = self.builder_config
        shape = (config.height, config.width, config.channels)
        yield from validate.good_examples(self, pairs, lambda pair: (pair.stem, example(pair, shape)))
