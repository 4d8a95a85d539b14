"""Shared test set-up: everything runs on the CPU; XLA compiles quickly, and once.

The environment is set here, before JAX is imported, so that this process and every
subprocess a test starts (`main`, scripts, several processes of one job) inherit it."""
import os
import tempfile
from pathlib import Path

# Tests check behaviour, not speed: cheaper compiles keep the suite fast.
os.environ.update({"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
                   "TF_CPP_MIN_LOG_LEVEL": "2"})

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

DRIVE_DUMMY = Path(__file__).resolve().parents[1] / "retina_jax" / "datasets" / "drive" / "dummy_data"

tf.config.set_visible_devices([], "GPU")


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the session, here and in the subprocesses started
    after this (they read it from the environment): most tests train the same smoke model, and
    each fresh `Experiment` or process would otherwise compile the same steps again."""
    from retina_jax import parallel
    cache_dir = str(tmp_path_factory.mktemp("xla_cache"))
    parallel.enable_compilation_cache(cache_dir)
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory):
    """Temporary files of the session, here and in its subprocesses, under pytest's own base
    folder (which pytest prunes), not the system's: TFDS leaves an empty `tmp*tfds` folder behind
    for every builder made before its data is prepared (DatasetInfo.initialize_from_bucket), a
    few hundred a session."""
    temp_dir = tmp_path_factory.mktemp("tmp")
    tempfile.tempdir = str(temp_dir)
    os.environ["TMPDIR"] = str(temp_dir)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def vessel_builder(tfds_dir):
    """The built-in seed vessel set, prepared once per test session."""
    from retina_jax import datasets
    return datasets.get_builder("retina_vessels", data_dir=tfds_dir)


@pytest.fixture
def smoke_config(tfds_dir, vessel_builder):
    """The vessel config's tiny variant, reading the session's prepared data."""
    from configs import vessels
    config = vessels.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    return config


@pytest.fixture(scope="session")
def duke_builder(tfds_dir):
    """The shipped Duke DME subjects 1-5, prepared once per test session."""
    from retina_jax import datasets
    return datasets.get_builder("duke_dme", data_dir=tfds_dir)


def shared_data_builder(name: str, tfds_dir: str):
    """The builder `name` on its default raw data (../shared/data/...), or a skip saying that
    folder is absent: the shared data sets are not part of the repository."""
    from retina_jax import datasets
    raw_dir = Path(datasets.builder_module(name).DEFAULT_MANUAL_DIR)
    if not raw_dir.is_dir():
        pytest.skip(f"{raw_dir} is absent: the real {name} data set lives outside the repository "
                    "(../shared/data); this test needs it.")
    return datasets.get_builder(name, data_dir=tfds_dir)


@pytest.fixture(scope="session")
def drive_builder(tfds_dir):
    """DRIVE's 20 training images from ../shared/data/drive (train 16, validation 4)."""
    return shared_data_builder("drive", tfds_dir)


@pytest.fixture(scope="session")
def chase_builder(tfds_dir):
    """CHASE_DB1 children 1-10 from ../shared/data/chase_db1 (train 16, validation 4)."""
    return shared_data_builder("chase_db1", tfds_dir)


@pytest.fixture(scope="session")
def drive_dummy_builder(tfds_dir):
    """The drive builder's dummy_data (official layout, with a test/ folder)."""
    from retina_jax import datasets
    return datasets.get_builder("drive", data_dir=tfds_dir, manual_dir=str(DRIVE_DUMMY))
