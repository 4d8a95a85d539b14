"""DRIVE protocol end to end on the dummy data: patch training, sliding-window evaluation inside
the FOV, the validation-chosen threshold applied to test, the human reference, and a
cross-dataset evaluation on CHASE_DB1; plus where results and thresholds are read and written."""
import csv
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import drive
from retina_jax import datasets, predict, train
from retina_jax.data import pipeline
from retina_jax.datasets.chase_db1 import chase_db1_dataset_builder
from retina_jax.datasets.drive import drive_dataset_builder

DRIVE_DUMMY = Path(drive_dataset_builder.__file__).parent / "dummy_data"
CHASE_DUMMY = Path(chase_db1_dataset_builder.__file__).parent / "dummy_data"


def test_cross_dataset_results_go_beside_the_home_ones():
    workdir = Path("/runs/drive")
    assert train.eval_dir(workdir, "drive", "drive", "test") == workdir / "eval" / "test"
    assert train.eval_dir(workdir, "chase_db1", "drive", "test") == workdir / "eval" / "chase_db1" / "test"


def test_validation_threshold_is_read_for_the_same_checkpoint_only(tmp_path):
    config = drive.get_config()
    config.dataset.name = "chase_db1"  # another dataset than the checkpoint's: nothing is re-run
    experiment = types.SimpleNamespace(config=config)
    with pytest.raises(FileNotFoundError, match=r"evaluate the validation split of 'drive' first \(--mode="
                                                r"evaluate --config.dataset.name=drive"):
        train.validation_threshold(experiment, None, tmp_path, 40, "drive")
    path = tmp_path / "eval" / "validation" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"checkpoint_step": 40, "best_threshold": 0.375}))
    assert train.validation_threshold(experiment, None, tmp_path, 40, "drive") == 0.375
    with pytest.raises(FileNotFoundError, match="no threshold chosen for checkpoint 41"):
        train.validation_threshold(experiment, None, tmp_path, 41, "drive")


def drive_dummy_config(tmp_path, arg):
    config = drive.get_config(arg)
    config.dataset.data_dir = str(tmp_path / "tfds")
    config.dataset.manual_dir = str(DRIVE_DUMMY)
    config.train.batch_size = 4
    config.eval.batch_size = 1
    return config


@pytest.fixture
def drive_smoke(tmp_path):
    return drive_dummy_config(tmp_path, "smoke")


def test_resized_evaluation_resizes_the_second_observer_with_the_first(drive_smoke):
    """With input.resize (e.g. a CHASE_DB1 evaluation at DRIVE's scale), the second observer's
    mask, kept beside the preprocessed example for the human reference, is resized too: it
    was left at full size, and evaluation stopped on incompatible shapes."""
    drive_smoke.input.resize = (64, 48)
    builder = datasets.get_builder("drive", data_dir=drive_smoke.dataset.data_dir,
                                   manual_dir=drive_smoke.dataset.manual_dir)
    dataset, _ = pipeline.eval_dataset(builder, "test", drive_smoke, local_batch_size=2,
                                       process_index=0, process_count=1)
    batch = next(dataset.as_numpy_iterator())
    assert {key: batch[key].shape for key in ("image", "mask", "fov", "mask2")} == {
        "image": (2, 64, 48, 1), "mask": (2, 64, 48, 1), "fov": (2, 64, 48, 1), "mask2": (2, 64, 48, 1)}
    second_observer = batch["mask2"][list(batch["has_mask2"]).index(True)]
    assert set(np.unique(second_observer)) == {0, 1}
    first_observer = batch["mask"][list(batch["has_mask2"]).index(True)]
    assert 0.5 < np.mean(second_observer == first_observer) < 1.0


def test_a_fov_diameter_trains_and_validates_at_the_scale_it_gives_the_split(drive_smoke, tmp_path):
    drive_smoke.input.fov_diameter = 1080  # twice the dummy DRIVE FOV's width (a disc of radius 270: 541 px)
    experiment = train.Experiment(drive_smoke)
    assert experiment.training_resolution() == 2.0
    assert experiment.eval_data("validation").scale == 2.0
    batch = next(pipeline.train_batches(experiment.builder, drive_smoke, local_batch_size=2, start_step=0,
                                        resolution=2.0))
    assert batch["image"].shape == (2, 32, 32, 1) and set(np.unique(batch["fov"])) <= {0.0, 1.0}
    drive_smoke.augment.crop_size = None  # whole images cannot be trained on at another scale
    with pytest.raises(ValueError, match=r"fov_diameter=1080 trains on the split 'train' seen at scale 2.0, "
                                         r"which is drawn as crops: set config.augment.crop_size"):
        train.train_and_evaluate(drive_smoke, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_drive_config_options_combine_and_unknown_ones_are_named():
    config = drive.get_config("all_images,smoke")
    assert config.dataset.train_split == "train+validation" and config.eval.checkpoint == "latest"
    assert config.train.num_steps == 4 and drive.get_config("all_images").train.num_steps == 7200
    default, cross_camera = drive.get_config(), drive.get_config("cross_camera,smoke")
    assert (default.augment.rotation, default.augment.scale) == (0.0, 0.0)
    assert (cross_camera.augment.rotation, cross_camera.augment.scale) == (45.0, 0.1)
    assert cross_camera.train.num_steps == 4
    with pytest.raises(ValueError, match="'smoke,test'.*'all_images', 'cross_camera', 'smoke'"):
        drive.get_config("smoke,test")


@pytest.mark.slow
def test_drive_protocol_end_to_end_on_dummy_data(drive_smoke, tmp_path):
    workdir = tmp_path / "run"
    final = train.train_and_evaluate(drive_smoke, workdir)
    assert final["step"] == 4 and final["num_examples"] == 1
    validation_dir = workdir / "eval" / "validation"
    validation = json.loads((validation_dir / "metrics.json").read_text())
    assert {"auc_roc", "auc_pr", "f1", "sensitivity", "specificity", "accuracy"} <= set(validation)
    assert validation["validation_threshold"] == validation["best_threshold"]
    assert validation["at_validation_threshold"]["f1"] == pytest.approx(validation["best_f1"])
    assert [path.name for path in (validation_dir / "probabilities").iterdir()] == ["25_training.png"]
    assert all((validation_dir / name).stat().st_size > 0 for name in ("roc.png", "pr.png", "overlays.png"))
    (only_case,) = csv.DictReader((validation_dir / "per_case.csv").open())  # one image: its AUCs are the split's
    assert float(only_case["auc_roc"]) == pytest.approx(validation["auc_roc"])
    assert float(only_case["auc_pr"]) == pytest.approx(validation["auc_pr"])

    drive_smoke.eval.split = "test"
    test = train.evaluate(drive_smoke, workdir)
    assert test["num_examples"] == 2 and test["validation_threshold"] == validation["best_threshold"]
    assert test["at_validation_threshold"]["threshold"] == validation["best_threshold"]
    assert test["human"]["num_cases"] == 1 and 0.5 < test["human"]["f1"] < 1.0  # only 01 has a 2nd observer
    rows = list(csv.DictReader((workdir / "eval" / "test" / "per_case.csv").open()))
    assert sorted(row["id"] for row in rows) == ["01_test", "02_test"]
    assert test["auc_roc_per_case_mean"] == pytest.approx(np.mean([float(row["auc_roc"]) for row in rows]))
    # Per-case pixels are the FOV's: the dummy FOV is a disc of radius 270 (~229,000 pixels).
    assert all(220_000 < int(row["tp"]) + int(row["fp"]) + int(row["fn"]) + int(row["tn"]) < 240_000
               for row in rows)

    # Without eval/validation, evaluating test on the home dataset chooses the threshold first.
    (validation_dir / "metrics.json").unlink()
    again = train.evaluate(drive_smoke, workdir)
    assert again["validation_threshold"] == validation["best_threshold"]
    assert (validation_dir / "metrics.json").exists()

    drive_smoke.dataset.name = "chase_db1"  # the DRIVE model on another dataset, any image size,
    drive_smoke.dataset.manual_dir = str(CHASE_DUMMY)
    cross = train.evaluate(drive_smoke, workdir)
    assert cross["num_examples"] == 1 and cross["validation_threshold"] == validation["best_threshold"]
    # Seen at DRIVE's scale (fov_diameter 540 over the dummy CHASE_DB1 FOV's 937 px: 0.576 -> 0.6),
    # scored at its own.
    assert cross["inference_scale"] == 0.6 and test["inference_scale"] == 1.0
    probability_map = Image.open(workdir / "eval" / "chase_db1" / "test" / "probabilities" / "Image_11L.png")
    assert probability_map.size == Image.open(CHASE_DUMMY / "images" / "Image_11L.jpg").size

    # --mode=predict chooses each image's scale from its own FOV, as evaluation did the split's.
    (tmp_path / "in").mkdir()
    shutil.copy(CHASE_DUMMY / "images" / "Image_11L.jpg", tmp_path / "in")
    drive_smoke.predict.update(input_dir=str(tmp_path / "in"), fov_dir=str(CHASE_DUMMY / "fov_mask"),
                               output_dir=str(tmp_path / "out"))
    predict.run(drive_smoke, str(workdir))
    [row] = csv.DictReader((tmp_path / "out" / "predictions.csv").open())
    assert float(row["inference_scale"]) == 0.6
    predicted = np.asarray(Image.open(tmp_path / "out" / "Image_11L_probability.png"), np.int64)
    assert np.abs(predicted - np.asarray(probability_map, np.int64)).max() <= 1
    assert json.loads((workdir / "eval" / "test" / "metrics.json").read_text())["num_examples"] == 2


@pytest.mark.slow
def test_drive_all_images_trains_on_validation_too_and_tests_the_latest_checkpoint(tmp_path):
    config = drive_dummy_config(tmp_path, "all_images,smoke")
    builder = datasets.get_builder(config.dataset.name, data_dir=config.dataset.data_dir,
                                   manual_dir=config.dataset.manual_dir)
    one_patch_each = config.copy_and_resolve_references()
    one_patch_each.augment.patches_per_image = 1
    # A batch of 3 needs an epoch of 3 images: the 2 dummy train images and validation's.
    batch = next(pipeline.train_batches(builder, one_patch_each, local_batch_size=3, start_step=0,
                                        process_index=0, process_count=1))
    assert batch["image"].shape[0] == 3
    one_patch_each.dataset.train_split = "train"
    with pytest.raises(ValueError, match="gives 2 examples per epoch"):
        pipeline.train_batches(builder, one_patch_each, local_batch_size=3, start_step=0,
                               process_index=0, process_count=1)

    workdir = tmp_path / "run"
    train.train_and_evaluate(config, workdir)
    validation = json.loads((workdir / "eval" / "validation" / "metrics.json").read_text())
    config.eval.split = "test"
    test = train.evaluate(config, workdir)
    assert test["checkpoint_step"] == validation["checkpoint_step"] == 4
    assert test["validation_threshold"] == validation["best_threshold"]
