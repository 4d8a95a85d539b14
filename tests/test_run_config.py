"""The trained run's config, recorded in the workdir and applied by evaluation, prediction and
Grad-CAM (retina_jax/run_config.py)."""
import json
import logging

import pytest

from configs import drive
from retina_jax import run_config


def trained_fold_config():
    """A DRIVE run trained with overrides of its model, preprocessing, patches and fold, and
    evaluated during training with settings that a later invocation may change."""
    config = drive.get_config("smoke")
    config.model.features = 6
    config.input.gamma = 0.8
    config.input.fov_diameter = 810
    config.augment.crop_size = (48, 48)
    config.dataset.cross_validation.num_folds = 5
    config.dataset.cross_validation.fold = 2
    config.train.ema_decay = 0.99
    config.eval.checkpoint = "latest"
    config.inference.flip_tta = False
    config.parallel.num_devices = 4
    config.conv = "xla"
    return config


def test_evaluation_applies_the_trained_fields_and_keeps_the_commands_own(tmp_path):
    trained = trained_fold_config()
    run_config.record_config(tmp_path, trained)
    command = drive.get_config("smoke")
    command.eval.split = "test"
    command.input.gamma = 0.5  # named on the command line: wins over the record

    merged = run_config.trained_config(command, tmp_path, overridden={"eval.split": "test", "input.gamma": 0.5})

    assert merged.model.features == 6 and merged.train.ema_decay == 0.99
    assert merged.augment.crop_size == (48, 48) and isinstance(merged.augment.crop_size, tuple)
    assert (merged.dataset.cross_validation.num_folds, merged.dataset.cross_validation.fold) == (5, 2)
    assert merged.input.gamma == 0.5 and merged.eval.split == "test"
    assert merged.eval.checkpoint == "latest", "which checkpoint is the model is the recipe's"
    # Invocation fields come from the command even where the record differs.
    assert merged.inference.flip_tta is True and merged.parallel.num_devices == 0
    assert merged.conv == command.conv == "onednn_bf16"
    assert command.model.features == 4, "the command's config is left as it was"
    recorded, applied = run_config.flatten_config(trained), run_config.flatten_config(merged)
    differing = {key for key in recorded if applied[key] != recorded[key]}
    assert differing == {"input.gamma", "eval.split", "inference.flip_tta", "parallel.num_devices", "conv"}


def test_naming_another_dataset_keeps_the_commands_dataset_group(tmp_path):
    run_config.record_config(tmp_path, trained_fold_config())
    command = drive.get_config("smoke")
    command.dataset.name = "chase_db1"

    cross_dataset = run_config.trained_config(command, tmp_path, overridden={"dataset.name": "chase_db1"})

    assert cross_dataset.dataset.to_dict() == command.dataset.to_dict()
    assert cross_dataset.dataset.cross_validation.num_folds == 0
    assert cross_dataset.model.features == 6 and cross_dataset.input.gamma == 0.8
    assert cross_dataset.input.fov_diameter == 810, "another camera is seen at the trained scale"
    command.dataset.name = "drive"
    same_dataset = run_config.trained_config(command, tmp_path, overridden={"dataset.name": "drive"})
    assert same_dataset.dataset.cross_validation.fold == 2


def test_a_workdir_without_a_record_uses_the_config_as_given(tmp_path, caplog):
    command = drive.get_config("smoke")
    with caplog.at_level(logging.WARNING):
        assert run_config.trained_config(command, tmp_path, overridden={}) is command
    assert f"{tmp_path / 'config.json'} does not exist" in caplog.text


def test_a_recorded_value_that_does_not_fit_is_named_unless_the_command_sets_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"features": "wide"}, "retired_group": {"field": 1}}))
    command = drive.get_config("smoke")
    with pytest.raises(ValueError, match=r"config.json: field 'model.features' holds 'wide'.*"
                                         r"--config.model.features=VALUE"):
        run_config.trained_config(command, tmp_path, overridden={})
    merged = run_config.trained_config(command, tmp_path, overridden={"model.features": 4})
    assert merged.model.features == 4  # and the field this version no longer has is ignored
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a config recorded by training"):
        run_config.trained_config(command, tmp_path, overridden={})
