"""Registry of the project's TFDS builders, and the one place that prepares them.

Usage:
  builder = datasets.get_builder("retina_vessels", data_dir="", manual_dir="")
  ds = builder.as_dataset(split="train")

Prepared data lives under `data_dir/<name>-<raw-data fingerprint>/`, so a dataset prepared from
one copy of the raw files is never reused for another copy (a later copy that adds a split, for
instance, triggers a fresh build instead of silently hiding that split). TFDS prepares into an
`incomplete.*` folder and renames it when every split is written, so a preparation that fails
(a bad file, see validate.py) leaves nothing that a later call takes for prepared data.

With `skip_bad_files`, examples whose files are bad are left out instead of failing the
preparation, and listed in `data_dir/<name>-<fingerprint>-skip_bad_files/skipped.csv` (file,
reason); such data is prepared apart from the data of the same files without skipping.
"""
import csv
import hashlib
import importlib
import io
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from retina_jax import io_utils
from retina_jax.datasets import image_pairs, validate

# name -> module holding `Builder` (a tfds GeneratorBasedBuilder with manual data),
# `DEFAULT_MANUAL_DIR` (where the raw files are when the config names none; may not exist, and
# "" when there is no default), optionally `make_builder(manual_dir, data_dir, skip_bad_files)`,
# for builders whose configuration is read from the raw data, and optionally `input_image(path)`,
# for builders that transform a raw image file before storing it (see `input_image` below).
_BUILDER_MODULES = {
    "chase_db1": "retina_jax.datasets.chase_db1.chase_db1_dataset_builder",
    "drive": "retina_jax.datasets.drive.drive_dataset_builder",
    "duke_dme": "retina_jax.datasets.duke_dme.duke_dme_dataset_builder",
    "idrid_grading": "retina_jax.datasets.idrid_grading.idrid_grading_dataset_builder",
    "image_folder": "retina_jax.datasets.image_folder.image_folder_dataset_builder",
    "oct2017": "retina_jax.datasets.oct2017.oct2017_dataset_builder",
    "retina_vessels": "retina_jax.datasets.retina_vessels.retina_vessels_dataset_builder",
}

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SKIPPED_REPORT = "skipped.csv"  # beside the prepared data of a `skip_bad_files` preparation


def available() -> list[str]:
    return sorted(_BUILDER_MODULES)


def default_data_dir() -> Path:
    """Project-local folder for prepared TFDS data (never the home folder)."""
    if os.environ.get("RETINA_JAX_DATA_DIR"):
        return Path(os.environ["RETINA_JAX_DATA_DIR"])
    if (PROJECT_ROOT / "setup.cfg").exists():
        return PROJECT_ROOT / "tfds_data"
    return Path.cwd() / "tfds_data"


def builder_module(name: str):
    if name not in _BUILDER_MODULES:
        raise ValueError(f"Unknown dataset {name!r}; available datasets: {', '.join(available())}.")
    return importlib.import_module(_BUILDER_MODULES[name])


def raw_data_fingerprint(manual_dir: Path) -> str:
    """Hash of every file's relative path and size under `manual_dir` (cheap, content-free)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in manual_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(manual_dir)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:12]


def get_builder(name: str, *, data_dir: str = "", manual_dir: str = "",
                skip_bad_files: bool = False) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder `name`, preparing it from `manual_dir` first if needed.

    Empty `manual_dir` means the builder's default (the copy shipped with the repo, or
    `../shared/data/...`); empty `data_dir` means `default_data_dir()`. `skip_bad_files`: see
    the module docstring (builders whose raw data is one file, such as retina_vessels, have
    nothing to skip: a bad file fails them either way).
    """
    module = builder_module(name)
    if not (manual_dir or module.DEFAULT_MANUAL_DIR):
        raise ValueError(f"Dataset {name!r} has no built-in data: pass --config.dataset.manual_dir=PATH."
                         f"\n{module.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    raw_dir = Path(manual_dir or module.DEFAULT_MANUAL_DIR).expanduser().resolve()
    if not raw_dir.is_dir():
        raise FileNotFoundError(
            f"Raw data folder for dataset {name!r} not found: {raw_dir}. "
            f"Pass --config.dataset.manual_dir=PATH.\n{module.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    skips = skip_bad_files and issubclass(module.Builder, validate.SkipsBadFiles)
    prepared_dir = (Path(data_dir or default_data_dir())
                    / f"{name}-{raw_data_fingerprint(raw_dir)}{'-skip_bad_files' if skips else ''}")
    options = {"skip_bad_files": True} if skips else {}
    if hasattr(module, "make_builder"):
        builder = module.make_builder(raw_dir, str(prepared_dir), **options)
    else:
        builder = module.Builder(data_dir=str(prepared_dir), **options)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
    if skips:
        report_skipped(builder, prepared_dir / SKIPPED_REPORT)
    return builder


def report_skipped(builder, report: Path) -> None:
    """Writes the files a preparation just skipped to `report` (a preparation that found none
    writes an empty one; data prepared earlier keeps its report), and warns when it lists any."""
    if builder.skipped_files or not report.exists():
        io_utils.write_csv(report, builder.skipped_files, validate.SKIPPED_COLUMNS)
    num_skipped = len(list(csv.DictReader(io.StringIO(report.read_text()))))
    if num_skipped:
        logging.warning("%s: %d bad file(s) were left out of the prepared data; see %s.",
                        builder.name, num_skipped, report)


def input_image(name: str, builder: tfds.core.DatasetBuilder, path) -> np.ndarray:
    """A user's image file as dataset `name` stores its `image` feature: the builder's own
    transformation of a raw file (its module's `input_image`, e.g. oct2017's 224x224 grey,
    idrid_grading's Graham preprocessing), else the file read with the dataset's channel count
    (grey files become R=G=B for colour datasets). Any size: segmentation models are fully
    convolutional. This is what `--mode=predict` feeds the shared preprocessing with, so that
    a model sees a user's image as it saw its training images."""
    module = builder_module(name)
    if hasattr(module, "input_image"):
        return module.input_image(epath.Path(path))
    return image_pairs.read_image(epath.Path(path), channels=builder.info.features["image"].shape[-1])
