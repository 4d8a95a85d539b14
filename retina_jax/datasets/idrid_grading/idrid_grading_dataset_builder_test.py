"""TFDS conformance test of the `idrid_grading` builder on `dummy_data/`, which is in IDRiD's
layout, and its errors for bad input.

dummy_data/ holds synthetic 96x64 fundus photographs (an orange disc clipped at top and bottom,
an optic disc, vessels, dark spots; JPEG) with the official CSVs' quirks (a trailing space in
the last header name; train.csv's 9 empty trailing columns): train IDRiD_001-006 with DR grades
0, 0, 0, 2, 2, 4 (grade 0's three images give the one validation image, round(0.2 x 3) = 1;
the other grades have too few), and test IDRiD_001-002 (grades 3 and 1), whose names repeat
the training names.
"""
import shutil
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from retina_jax.datasets.idrid_grading import idrid_grading_dataset_builder as idrid

DUMMY = Path(idrid.__file__).parent / "dummy_data"


class IdridGradingTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = idrid.Builder
    SPLITS = {"train": 5, "validation": 1, "test": 2}


def copy_tree(tmp_path: Path) -> epath.Path:
    return epath.Path(shutil.copytree(DUMMY, tmp_path / "idrid"))


def test_splits_ids_and_labels_of_the_dummy_data():
    splits = idrid.records_by_split(epath.Path(DUMMY))
    labels = {split: [(record.id, record.grade, record.dme_risk) for record in records]
              for split, records in splits.items()}
    assert sorted(labels["train"] + labels["validation"]) == [
        ("train/IDRiD_001", 0, 0), ("train/IDRiD_002", 0, 0), ("train/IDRiD_003", 0, 1),
        ("train/IDRiD_004", 2, 2), ("train/IDRiD_005", 2, 2), ("train/IDRiD_006", 4, 2)]
    assert [grade for _, grade, _ in labels["validation"]] == [0]
    assert labels["test"] == [("test/IDRiD_001", 3, 1), ("test/IDRiD_002", 1, 0)]


def test_validation_is_the_same_whatever_the_order_of_the_csv():
    records = idrid.folder_records(epath.Path(DUMMY), "train")
    forward, backward = idrid.split_validation(records), idrid.split_validation(records[::-1])
    assert [record.id for record in forward[1]] == [record.id for record in backward[1]]


def test_without_images_test_there_is_no_test_split(tmp_path):
    manual_dir = copy_tree(tmp_path)
    shutil.rmtree(manual_dir / "images" / "test")
    assert set(idrid.records_by_split(manual_dir)) == {"train", "validation"}


def replace_in_csv(manual_dir: epath.Path, split: str, old: str, new: str) -> None:
    csv_path = manual_dir / "labels" / f"{split}.csv"
    csv_path.write_text(csv_path.read_text().replace(old, new))


def test_a_csv_row_without_its_image_names_the_missing_file(tmp_path):
    manual_dir = copy_tree(tmp_path)
    (manual_dir / "images" / "train" / "IDRiD_004.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"train.csv lists 'IDRiD_004' but "
                                                r".*images/train/IDRiD_004.jpg does not exist"):
        idrid.records_by_split(manual_dir)


def test_an_image_without_a_csv_row_is_named(tmp_path):
    manual_dir = copy_tree(tmp_path)
    shutil.copy(manual_dir / "images" / "test" / "IDRiD_001.jpg",
                manual_dir / "images" / "test" / "IDRiD_003.jpg")
    with pytest.raises(ValueError, match=r"images/test/IDRiD_003.jpg has no row in .*labels/test.csv"):
        idrid.records_by_split(manual_dir)


@pytest.mark.parametrize("old, new, column, upper", [
    ("IDRiD_006,4,2", "IDRiD_006,5,2", "Retinopathy grade", 4),
    ("IDRiD_006,4,2", "IDRiD_006,4,3", "Risk of macular edema", 2),
    ("IDRiD_006,4,2", "IDRiD_006,four,2", "Retinopathy grade", 4),
])
def test_a_grade_out_of_range_names_the_csv_line_and_column(tmp_path, old, new, column, upper):
    manual_dir = copy_tree(tmp_path)
    replace_in_csv(manual_dir, "train", old, new)
    with pytest.raises(ValueError, match=rf"train.csv, line 7: '{column}' is .*; expected an "
                                         rf"integer 0..{upper}"):
        idrid.records_by_split(manual_dir)


def test_a_missing_csv_column_is_named(tmp_path):
    manual_dir = copy_tree(tmp_path)
    replace_in_csv(manual_dir, "test", "Risk of macular edema", "DME")
    with pytest.raises(ValueError, match=r"test.csv has no column\(s\) \['Risk of macular edema'\]"):
        idrid.records_by_split(manual_dir)


def test_an_unreadable_or_black_image_is_named(tmp_path):
    manual_dir = copy_tree(tmp_path)
    records = {record.id: record for record in idrid.folder_records(manual_dir, "train")}
    records["train/IDRiD_002"].image.write_bytes(b"not a JPEG")
    with pytest.raises(ValueError, match=r"images/train/IDRiD_002.jpg is not a readable image"):
        idrid.example(records["train/IDRiD_002"])
    Image.new("RGB", (96, 64)).save(records["train/IDRiD_003"].image)
    with pytest.raises(ValueError, match=r"images/train/IDRiD_003.jpg: no pixel is brighter"):
        idrid.example(records["train/IDRiD_003"])


def test_a_missing_training_folder_says_what_the_layout_is(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)images/train not found.*labels/train.csv"):
        idrid.records_by_split(epath.Path(tmp_path))


if __name__ == "__main__":
    tfds.testing.test_main()
