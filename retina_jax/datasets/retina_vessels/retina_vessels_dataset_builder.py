"""`retina_vessels`: 64x64 grey retinal patches with binary vessel masks.

Source: github.com/Cheung-Chak-Hang-Billy/Retina-Images-Processing (commit a18401784f9e), shipped
with this repo under `data/`. Splits: train 537 and validation 173 labelled patches, test 174
unlabelled patches (their masks are all zero and `labelled` is False; never score them).

Usage:
  from retina_jax import datasets
  builder = datasets.get_builder("retina_vessels")
  ds = builder.as_dataset(split="train")  # {"image", "mask", "labelled", "id"}
"""
import io
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

DEFAULT_MANUAL_DIR = Path(__file__).parent / "data"

ZIP_NAME = "retinal_vessel_dataset.zip"
NPZ_NAME = "retinal_vessel_dataset.npz"
PATCH_SHAPE = (64, 64)

HOMEPAGE = "https://github.com/Cheung-Chak-Hang-Billy/Retina-Images-Processing"
SOURCE_COMMIT = "a18401784f9e57fde5ebad369cf8a29c7e728d8b"
CITATION = f"""\
@misc{{retina_images_processing,
  author = {{Cheung Chak Hang Billy}},
  title = {{Retina-Images-Processing}},
  howpublished = {{\\url{{{HOMEPAGE}}}, commit {SOURCE_COMMIT}}},
}}
"""

# split name -> (image key, mask key or None when the split has no published labels)
SPLIT_KEYS = {
    "train": ("x_train", "y_train"),
    "validation": ("x_val", "y_val"),
    "test": ("x_test", None),
}


def required_keys() -> list[str]:
    return [key for keys in SPLIT_KEYS.values() for key in keys if key is not None]


def read_npz_bytes(manual_dir: epath.Path) -> tuple[bytes, str]:
    """Returns the npz payload and a description of where it came from (for error messages)."""
    zip_path, npz_path = manual_dir / ZIP_NAME, manual_dir / NPZ_NAME
    if zip_path.exists():
        try:
            with zipfile.ZipFile(io.BytesIO(zip_path.read_bytes())) as archive:
                if NPZ_NAME not in archive.namelist():
                    raise ValueError(
                        f"{zip_path} has no member {NPZ_NAME!r}; it holds {archive.namelist()}.")
                return archive.read(NPZ_NAME), f"{zip_path}:{NPZ_NAME}"
        except zipfile.BadZipFile as error:
            raise ValueError(f"{zip_path} is not a readable zip archive ({error}).") from error
    if npz_path.exists():
        return npz_path.read_bytes(), str(npz_path)
    raise FileNotFoundError(
        f"Neither {ZIP_NAME} nor {NPZ_NAME} found in {manual_dir}.\n"
        f"{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")


def check_images(key: str, images: np.ndarray, source: str) -> None:
    rows, cols = PATCH_SHAPE
    if images.ndim != 3 or images.shape[1:] != PATCH_SHAPE:
        raise ValueError(
            f"{key} in {source} has shape {images.shape}; expected (N, {rows}, {cols}).")
    in_range = (images >= 0) & (images <= 255) & (images == np.round(images))
    if not in_range.all():
        raise ValueError(
            f"{key} in {source} holds grey values outside the integers 0..255, "
            f"e.g. {np.unique(images[~in_range])[:5].tolist()}.")


def check_masks(key: str, masks: np.ndarray, images_key: str, num_images: int, source: str) -> None:
    expected_shape = (num_images, *PATCH_SHAPE)
    if masks.shape != expected_shape:
        raise ValueError(
            f"{key} in {source} has shape {masks.shape}; expected {expected_shape} "
            f"(N = {num_images} to match {images_key}).")
    is_binary = (masks == 0) | (masks == 1)
    if not is_binary.all():
        raise ValueError(
            f"{key} in {source} holds mask values other than 0 and 1, "
            f"e.g. {np.unique(masks[~is_binary])[:5].tolist()}.")


def validate(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raises ValueError naming the key and what was expected when `arrays` is malformed."""
    missing = [key for key in required_keys() if key not in arrays]
    if missing:
        raise ValueError(
            f"{source} lacks key(s) {missing}; expected {required_keys()}, found {sorted(arrays)}.")
    for images_key, masks_key in SPLIT_KEYS.values():
        check_images(images_key, arrays[images_key], source)
        if masks_key is not None:
            check_masks(masks_key, arrays[masks_key], images_key, len(arrays[images_key]), source)


def load_arrays(manual_dir) -> dict[str, np.ndarray]:
    """Validated arrays from `manual_dir`, keyed as in the npz file and cast to uint8."""
    payload, source = read_npz_bytes(epath.Path(manual_dir))
    try:
        with np.load(io.BytesIO(payload)) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{source} is not a readable .npz file ({error}).") from error
    validate(arrays, source)
    return {key: arrays[key].astype(np.uint8) for key in required_keys()}


class Builder(tfds.core.GeneratorBasedBuilder):
    """64x64 retinal-vessel segmentation patches."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train/validation with vessel masks, unlabelled test.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place {ZIP_NAME} (holding {NPZ_NAME}) or the unzipped {NPZ_NAME} in the manual dir.\n"
        "The file ships with this repo under retina_jax/datasets/retina_vessels/data/; it comes "
        f"from {HOMEPAGE} (commit {SOURCE_COMMIT}).")

    def _info(self) -> tfds.core.DatasetInfo:
        patch = (*PATCH_SHAPE, 1)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "64x64 grey retinal fundus patches with binary vessel masks (1 = vessel). The "
                "test split has no published labels: its masks are all zero and `labelled` is "
                "False. Reference: the source repo's hourglass autoencoder reached Dice 0.7448 "
                "on validation. No licence is stated by the source."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=patch, dtype=np.uint8),
                "mask": tfds.features.Image(shape=patch, dtype=np.uint8),
                "labelled": tfds.features.Scalar(dtype=np.bool_),
                "id": tfds.features.Text(),
            }),
            supervised_keys=None,
            homepage=HOMEPAGE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        arrays = load_arrays(dl_manager.manual_dir)
        return {
            split: self._generate_examples(
                split=split,
                images=arrays[images_key],
                masks=arrays[masks_key] if masks_key else None)
            for split, (images_key, masks_key) in SPLIT_KEYS.items()
        }

    def _generate_examples(self, split: str, images: np.ndarray, masks: np.ndarray | None):
        labelled = masks is not None
        if not labelled:
            masks = np.zeros_like(images)
        for index, (image, mask) in enumerate(zip(images, masks)):
            example_id = f"{split}_{index:04d}"
            yield example_id, {
                "image": image[..., np.newaxis],
                "mask": mask[..., np.newaxis],
                "labelled": labelled,
                "id": example_id,
            }
