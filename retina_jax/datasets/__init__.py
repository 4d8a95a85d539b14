"""Registry of the project's TFDS builders, and the one place that prepares them.

Usage:
  builder = datasets.get_builder("retina_vessels", data_dir="", manual_dir="")
  ds = builder.as_dataset(split="train")

Prepared data lives under `data_dir/<name>-<raw-data fingerprint>/`, so a dataset prepared from
one copy of the raw files is never reused for another copy (a later copy that adds a split, for
instance, triggers a fresh build instead of silently hiding that split).
"""
import hashlib
import importlib
import os
from pathlib import Path

import tensorflow_datasets as tfds

# name -> module holding `Builder` (a tfds GeneratorBasedBuilder with manual data),
# `DEFAULT_MANUAL_DIR` (where the raw files are when the config names none; may not exist, and
# "" when there is no default) and optionally `make_builder(manual_dir, data_dir)`, for builders
# whose configuration is read from the raw data.
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


def get_builder(name: str, *, data_dir: str = "", manual_dir: str = "") -> tfds.core.DatasetBuilder:
    """Returns the prepared builder `name`, preparing it from `manual_dir` first if needed.

    Empty `manual_dir` means the builder's default (the copy shipped with the repo, or
    `../shared/data/...`); empty `data_dir` means `default_data_dir()`.
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
    prepared_dir = Path(data_dir or default_data_dir()) / f"{name}-{raw_data_fingerprint(raw_dir)}"
    if hasattr(module, "make_builder"):
        builder = module.make_builder(raw_dir, str(prepared_dir))
    else:
        builder = module.Builder(data_dir=str(prepared_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
    return builder
