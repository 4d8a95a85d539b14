"""The `drive` and `chase_db1` builders on the real data in ../shared/data and on their dummy data:
splits and ids, features, the missing-test-split error, layouts and bad input."""
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from configs import drive
from retina_jax import datasets, metrics
from retina_jax.data import pipeline
from retina_jax.datasets.chase_db1 import chase_db1_dataset_builder as chase
from retina_jax.datasets.drive import drive_dataset_builder as drive_builder_module
from retina_jax.tasks import segmentation

DRIVE_DUMMY = Path(drive_builder_module.__file__).parent / "dummy_data"
eval_counts = jax.jit(lambda probabilities, batch: segmentation.eval_counts(
    segmentation.case_counts(probabilities, batch, threshold=0.5, num_bins=2), batch))
CHASE_DUMMY = Path(chase.__file__).parent / "dummy_data"


def whole_split(builder, split):
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))


def test_drive_real_splits_ids_and_features(drive_builder):
    assert {name: info.num_examples for name, info in drive_builder.info.splits.items()} == {
        "train": 16, "validation": 4}
    validation = whole_split(drive_builder, "validation")
    assert sorted(validation["id"].tolist()) == [b"25_training", b"30_training", b"35_training", b"40_training"]
    train_ids = {int(i[:2]) for i in whole_split(drive_builder, "train")["id"]}
    assert train_ids == set(range(21, 41)) - {25, 30, 35, 40}
    assert validation["image"].shape == (4, 584, 565, 3) and validation["image"].dtype == np.uint8
    for key in ("mask", "fov", "mask2"):
        assert validation[key].shape == (4, 584, 565, 1) and set(np.unique(validation[key])) <= {0, 1}
    assert validation["labelled"].all() and not validation["has_mask2"].any() and not validation["mask2"].any()
    # DRIVE's FOV covers ~69% of the image; vessels ~12% of the FOV (Staal et al.: 12.7% overall).
    fov = validation["fov"] > 0
    assert 0.66 < fov.mean() < 0.72
    assert 0.10 < validation["mask"][fov].mean() < 0.16


def test_asking_drive_for_the_absent_test_split_says_where_it_goes(drive_builder):
    with pytest.raises(ValueError, match=r"(?s)no split 'test'.*test/images/NN_test.tif"):
        pipeline.eval_dataset(drive_builder, "test", drive.get_config(), local_batch_size=2)


def test_drive_test_folder_in_the_official_layout(drive_dummy_builder):
    test = whole_split(drive_dummy_builder, "test")
    order = np.argsort(test["id"])
    assert test["id"][order].tolist() == [b"01_test", b"02_test"]
    assert test["labelled"].all()
    assert test["has_mask2"][order].tolist() == [True, False]
    assert test["mask2"][order][0].any() and not test["mask2"][order][1].any()


def copy_tree(source: Path, target: Path) -> epath.Path:
    shutil.copytree(source, target)
    return epath.Path(target)


def test_drive_test_folder_without_annotations_is_unlabelled(tmp_path):
    manual_dir = copy_tree(DRIVE_DUMMY, tmp_path / "drive")
    shutil.rmtree(manual_dir / "test" / "1st_manual")
    cases = drive_builder_module.cases_by_split(manual_dir)
    assert [case.manual for case in cases["test"]] == [None, None]
    assert all(case.manual is not None for case in cases["train"] + cases["validation"])


def test_drive_bad_input_names_the_file_and_what_was_expected(tmp_path):
    manual_dir = copy_tree(DRIVE_DUMMY, tmp_path / "drive")
    mask = manual_dir / "training" / "mask" / "22_training_mask.gif"
    mask.rename(tmp_path / mask.name)
    with pytest.raises(FileNotFoundError, match=r"No field-of-view mask for .*22_training.tif: expected "
                                                r".*training/mask/22_training_mask.gif"):
        drive_builder_module.cases_by_split(manual_dir)
    (tmp_path / mask.name).rename(mask)
    images = manual_dir / "training" / "images"
    (images / "21_training.tif").rename(images / "img21.tif")
    with pytest.raises(ValueError, match=r"img21.tif: expected DRIVE images named NN_training.tif"):
        drive_builder_module.cases_by_split(manual_dir)
    with pytest.raises(FileNotFoundError, match="training/images not found"):
        drive_builder_module.cases_by_split(epath.Path(tmp_path))


def test_drive_image_of_the_wrong_size_is_named(tmp_path):
    manual_dir = copy_tree(DRIVE_DUMMY, tmp_path / "drive")
    Image.new("RGB", (100, 80)).save(manual_dir / "training" / "images" / "21_training.tif")
    case = drive_builder_module.cases_by_split(manual_dir)["train"][0]
    with pytest.raises(ValueError, match=r"21_training.tif is 100x80 with 3 channel\(s\); DRIVE images "
                                         r"are 565x584 \(width x height\)"):
        drive_builder_module.fundus.example(case, drive_builder_module.IMAGE_SHAPE, "DRIVE")


def test_chase_split_by_child_and_flat_layout(tmp_path):
    splits = chase.cases_by_split(epath.Path(CHASE_DUMMY))
    assert {split: [case.id for case in cases] for split, cases in splits.items()} == {
        "train": ["Image_01L"], "validation": ["Image_09R"], "test": ["Image_11L"]}
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in CHASE_DUMMY.rglob("*.*"):
        shutil.copy(path, flat / path.name)  # the official zip's layout: one folder
    flat_cases = chase.find_cases(epath.Path(flat))
    assert [(case.id, case.fov.name, case.manual.name, case.manual2.name) for case in flat_cases] == [
        (stem, f"{stem}_fov.png", f"{stem}_1stHO.png", f"{stem}_2ndHO.png")
        for stem in ("Image_01L", "Image_09R", "Image_11L")]
    (flat / "Image_09R_fov.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)Image_09R_fov.png.*ships no FOV masks"):
        chase.find_cases(epath.Path(flat))


def test_chase_without_validation_children_is_refused(tmp_path):
    manual_dir = copy_tree(CHASE_DUMMY, tmp_path / "chase")
    for path in manual_dir.glob("*/Image_09R*"):
        path.unlink()
    with pytest.raises(ValueError, match=r"no image of children \(9, 10\) \(the validation split\)"):
        chase.cases_by_split(manual_dir)


def test_chase_real_data_and_its_human_reference(chase_builder):
    """The 20 shipped images; the second observer against the first inside the FOV, by the
    evaluation's own counting, is the F1 0.768 that ../shared/data/chase_db1/SOURCE.md reports."""
    builder = chase_builder
    assert {name: info.num_examples for name, info in builder.info.splits.items()} == {
        "train": 16, "validation": 4}
    validation = whole_split(builder, "validation")
    assert sorted(validation["subject"].tolist()) == [9, 9, 10, 10]
    assert validation["image"].shape == (4, 960, 999, 3) and validation["has_mask2"].all()
    total = None
    for split in ("train", "validation"):
        for example in tfds.as_numpy(builder.as_dataset(split=split, batch_size=4)):
            batch = {"mask": jnp.asarray(example["mask"], jnp.float32), "mask2": example["mask2"],
                     "fov": jnp.asarray(example["fov"], jnp.float32), "has_mask2": example["has_mask2"],
                     "labelled": jnp.ones(len(example["id"]))}
            counts = eval_counts(batch["mask"], batch)
            total = metrics.accumulate(total, counts)
    human = segmentation.human_reference(total)
    assert human["num_cases"] == 20
    assert human["f1"] == pytest.approx(0.768, abs=5e-4)
