"""K-fold cross-validation: the config's train and validation splits read folds of one pool."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from configs import drive, duke_fluid
from retina_jax import checkpoint, gradcam, train
from retina_jax.data import pipeline
from retina_jax.datasets.drive import drive_dataset_builder
from tests.test_gradcam import save_initial_state

DRIVE_DUMMY = Path(drive_dataset_builder.__file__).parent / "dummy_data"
DRIVE_DUMMY_IDS = ["21_training", "22_training", "25_training"]  # train 21, 22; validation 25


@pytest.fixture
def drive_folds(tfds_dir):
    config = drive.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    config.dataset.cross_validation.num_folds = 3
    return config


def eval_ids(builder, split, config, process_index=0, process_count=1):
    dataset, num_batches = pipeline.eval_dataset(builder, split, config, local_batch_size=1,
                                                 process_index=process_index, process_count=process_count)
    ids = [batch["id"][0].decode() for batch in pipeline.padded_batches(dataset, num_batches, 1)
           if batch["valid"][0]]
    return ids, num_batches


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_each_fold_holds_out_one_group_and_trains_on_the_rest(drive_dummy_builder, drive_folds, fold):
    drive_folds.dataset.cross_validation.fold = fold
    held_out = DRIVE_DUMMY_IDS[fold]
    assert pipeline.select(drive_dummy_builder, "validation", drive_folds) == pipeline.Selection(
        "train+validation", "id", (held_out,))
    training = pipeline.select(drive_dummy_builder, "train", drive_folds)
    assert training.groups == tuple(i for i in DRIVE_DUMMY_IDS if i != held_out)
    assert eval_ids(drive_dummy_builder, "validation", drive_folds) == ([held_out], 1)
    assert sorted(eval_ids(drive_dummy_builder, "train", drive_folds)[0]) == list(training.groups)
    # Splits the folds do not redefine read as named.
    assert sorted(eval_ids(drive_dummy_builder, "test", drive_folds)[0]) == ["01_test", "02_test"]


def test_training_batches_come_from_the_training_folds_only(drive_dummy_builder, drive_folds):
    drive_folds.dataset.cross_validation.fold = 1  # train on 21 and 25
    drive_folds.augment.patches_per_image = 1
    for name in ("hflip", "vflip", "rot90"):
        drive_folds.augment[name] = False
    drive_folds.augment.update(rotation=0.0, scale=0.0, brightness=0.0, contrast=0.0, crop_size=None)
    # An epoch is the 2 training images: a batch of 3 would need a third.
    with pytest.raises(ValueError, match="gives 2 examples per epoch"):
        next(pipeline.train_batches(drive_dummy_builder, drive_folds, local_batch_size=3, start_step=0))
    batch = next(pipeline.train_batches(drive_dummy_builder, drive_folds, local_batch_size=2, start_step=0))
    dataset, num_batches = pipeline.eval_dataset(drive_dummy_builder, "train+validation", drive_folds,
                                                 local_batch_size=1)
    whole = {batch["id"][0].decode(): batch["image"][0]
             for batch in pipeline.padded_batches(dataset, num_batches, 1)}
    trained = {image.tobytes() for image in batch["image"]}
    assert trained == {whole["21_training"].tobytes(), whole["25_training"].tobytes()}


def test_processes_split_a_fold_between_them(drive_dummy_builder, drive_folds):
    drive_folds.dataset.cross_validation.fold = 0  # train on 22 and 25
    parts = [eval_ids(drive_dummy_builder, "train", drive_folds, index, 2) for index in range(2)]
    assert sorted(parts[0][0] + parts[1][0]) == ["22_training", "25_training"]
    assert parts[0][1] == parts[1][1]  # every process runs the same number of batches


def test_subjects_stay_in_one_fold(duke_builder, tfds_dir):
    config = duke_fluid.get_config()
    config.dataset.data_dir = tfds_dir
    config.dataset.cross_validation.update(num_folds=5, fold=3, group_by="subject")
    subjects = np.array(pipeline.group_values(duke_builder, "train+validation", "subject")).astype(int)
    assert sorted(set(subjects)) == [1, 2, 3, 4, 5]
    validation = pipeline.select(duke_builder, "validation", config)
    assert validation.groups == ("4",)
    assert pipeline.selection_size(duke_builder, validation, 0, 1) == np.sum(subjects == 4)
    training = pipeline.select(duke_builder, "train", config)
    assert training.groups == ("1", "2", "3", "5")
    assert pipeline.selection_size(duke_builder, training, 0, 1) == np.sum(subjects != 4)


@pytest.mark.parametrize("settings, message", [
    ({"num_folds": 3, "fold": 3}, "fold 3 of num_folds 3"),
    ({"num_folds": 1}, "num_folds >= 2"),
    ({"num_folds": 4}, "3 distinct 'id' values, fewer than the 4 folds"),
    ({"num_folds": 3, "group_by": "eye"}, "group_by='eye' is not a feature of drive"),
    ({"num_folds": 3, "pool": "train+valid"}, "no split 'valid'"),
])
def test_bad_fold_settings_are_named(drive_dummy_builder, drive_folds, settings, message):
    drive_folds.dataset.cross_validation.update(settings)
    with pytest.raises(ValueError, match=message):
        pipeline.select(drive_dummy_builder, "validation", drive_folds)


def test_drive_fold_4_is_the_default_validation_split(drive_builder, tfds_dir):
    config = drive.get_config()
    config.dataset.data_dir = tfds_dir
    config.dataset.cross_validation.update(num_folds=5, fold=4)
    default_validation = sorted(pipeline.group_values(drive_builder, "validation", "id"))
    assert pipeline.select(drive_builder, "validation", config).groups == tuple(default_validation)
    config.dataset.cross_validation.fold = 0
    assert pipeline.select(drive_builder, "validation", config).groups == (
        "21_training", "26_training", "31_training", "36_training")


def test_gradcam_of_a_fold_explains_its_held_out_image(drive_dummy_builder, drive_folds, tmp_path):
    """The validation split Grad-CAM explains is the fold's, as evaluation reads it."""
    drive_folds.dataset.manual_dir = str(DRIVE_DUMMY)
    drive_folds.dataset.cross_validation.fold = 0
    drive_folds.gradcam.num_images = 2
    save_initial_state(drive_folds, tmp_path)
    summary = gradcam.run(drive_folds, str(tmp_path))
    assert [row["id"] for row in summary["images"]] == ["21_training"]


@pytest.mark.slow
def test_a_fold_run_validates_on_its_held_out_image(tmp_path):
    config = drive.get_config("smoke")
    config.dataset.data_dir = str(tmp_path / "tfds")
    config.dataset.manual_dir = str(DRIVE_DUMMY)
    config.train.batch_size = 4
    config.eval.batch_size = 1
    config.dataset.cross_validation.update(num_folds=3, fold=0)
    final = train.train_and_evaluate(config, tmp_path / "fold0")
    assert final["step"] == 4 and final["num_examples"] == 1
    rows = list(csv.DictReader((tmp_path / "fold0" / "eval" / "validation" / "per_case.csv").open()))
    assert [row["id"] for row in rows] == ["21_training"]
    saved = json.loads((tmp_path / "fold0" / "eval" / "validation" / "metrics.json").read_text())
    assert saved["num_examples"] == 1
    config.dataset.cross_validation.num_folds = 0  # the default split: image 21 trained it
    with pytest.raises(checkpoint.CheckpointMismatchError, match="cross_validation.fold=0"):
        train.evaluate(config, tmp_path / "fold0")
