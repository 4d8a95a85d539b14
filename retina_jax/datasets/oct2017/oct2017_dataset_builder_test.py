"""TFDS conformance test of the `oct2017` builder on `dummy_data/`, which is in OCT2017's layout,
its class counts per split, and its errors for bad input.

dummy_data/ holds synthetic grey B-scans (a bright wavy band on dark noise; JPEG) of 64x62,
96x62 and 192x62 (the real 512, 768 and 1536 px widths / 8), named as the real files:
train CNV-1016042-1/-2, CNV-1000002-1, DME-1047871-1 (stored as RGB), DRUSEN-1000002-1,
DRUSEN-1089533-1, NORMAL-1001666-1/-2; test one scan per class. Patient 1000002 is the only one
with sha256 % 10 == 0: its CNV and DRUSEN scans are the validation split.
"""
import collections
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from retina_jax import datasets
from retina_jax.datasets.oct2017 import oct2017_dataset_builder as oct2017

DUMMY = Path(oct2017.__file__).parent / "dummy_data"


class Oct2017Test(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = oct2017.Builder
    SPLITS = {"train": 6, "validation": 2, "test": 4}


def copy_tree(tmp_path: Path) -> epath.Path:
    return epath.Path(shutil.copytree(DUMMY, tmp_path / "oct2017"))


def test_prepared_splits_hold_these_classes_and_patients(tmp_path):
    builder = datasets.get_builder("oct2017", data_dir=str(tmp_path / "tfds"), manual_dir=str(DUMMY))
    counts, patients = {}, {}
    for split in ("train", "validation", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        assert data["image"].shape[1:] == (224, 224, 1) and data["image"].dtype == np.uint8
        names = builder.info.features["label"].names
        counts[split] = dict(collections.Counter(names[label] for label in data["label"]))
        patients[split] = {patient.decode() for patient in data["patient"]}
    assert counts == {"train": {"CNV": 2, "DME": 1, "DRUSEN": 1, "NORMAL": 2},
                      "validation": {"CNV": 1, "DRUSEN": 1},
                      "test": {"CNV": 1, "DME": 1, "DRUSEN": 1, "NORMAL": 1}}
    assert patients["validation"] == {"1000002"}
    assert not patients["train"] & patients["validation"]


def test_ids_name_the_split_class_and_file():
    scans = oct2017.scans_by_split(epath.Path(DUMMY))
    assert [scan.id for scan in scans["validation"]] == ["train/CNV/CNV-1000002-1",
                                                         "train/DRUSEN/DRUSEN-1000002-1"]
    assert scans["test"][0].id == "test/CNV/CNV-53018-1"


def test_scans_of_any_size_and_colour_become_224_square_grey():
    for name in ("train/DME/DME-1047871-1.jpeg", "train/CNV/CNV-1016042-2.jpeg"):  # RGB 192x62, 96x62
        scan = oct2017.input_image(epath.Path(DUMMY / name))
        assert scan.shape == (224, 224, 1) and scan.dtype == np.uint8 and scan.max() > 150


def test_no_default_manual_dir_asks_for_one():
    with pytest.raises(ValueError, match=r"(?s)no built-in data: pass --config.dataset.manual_dir.*"
                                         r"train/ and test/"):
        datasets.get_builder("oct2017")


def test_an_unexpected_class_folder_is_named(tmp_path):
    manual_dir = copy_tree(tmp_path)
    (manual_dir / "train" / "NORMAL").rename(manual_dir / "train" / "HEALTHY")
    with pytest.raises(ValueError, match=r"train/HEALTHY: unexpected entry; .* only the class folders"):
        oct2017.scans_by_split(manual_dir)


@pytest.mark.parametrize("name, message", [
    ("CNV_1016042_3.jpeg", r"CNV/CNV_1016042_3.jpeg: expected a file named CNV-<patient>-<n>.jpeg"),
    ("scan.png", r"CNV/scan.png: expected a file named CNV-<patient>-<n>.jpeg"),
    ("DME-1016042-3.jpeg", r"CNV/DME-1016042-3.jpeg: the file name says 'DME' but the file is in "
                           r"the CNV folder"),
])
def test_an_unparsable_name_is_named(tmp_path, name, message):
    manual_dir = copy_tree(tmp_path)
    shutil.copy(manual_dir / "test" / "CNV" / "CNV-53018-1.jpeg", manual_dir / "test" / "CNV" / name)
    with pytest.raises(ValueError, match=message):
        oct2017.scans_by_split(manual_dir)


def test_an_unreadable_image_is_named(tmp_path):
    manual_dir = copy_tree(tmp_path)
    path = manual_dir / "test" / "DME" / "DME-1083159-1.jpeg"
    path.write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"test/DME/DME-1083159-1.jpeg is not a readable image"):
        oct2017.input_image(path)


def test_an_empty_or_missing_split_folder_raises(tmp_path):
    manual_dir = copy_tree(tmp_path)
    for class_dir in (manual_dir / "test").iterdir():
        shutil.rmtree(class_dir)
    with pytest.raises(ValueError, match=r"test holds no scan"):
        oct2017.scans_by_split(manual_dir)
    shutil.rmtree(manual_dir / "test")
    with pytest.raises(FileNotFoundError, match=r"(?s)oct2017/test not found.*CNV/, DME/"):
        oct2017.scans_by_split(manual_dir)


if __name__ == "__main__":
    tfds.testing.test_main()
