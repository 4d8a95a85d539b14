"""The config a workdir was trained with: recorded by training in `workdir/config.json`, read back
by evaluation, prediction and Grad-CAM so that they apply the model as it was trained.

Training writes the whole config (`record_config`). `--mode=evaluate|predict|gradcam` then
start from it (`trained_config`): the model, its input preprocessing, the examples it trained
and validated on (cross-validation fold included), its optimizer chain, how checkpoints were
ranked and which one is the model (best or latest) come from the workdir, so a run trained with
`--config.model.features=32 --config.input.gamma=0.8` is evaluated by `--mode=evaluate` without
repeating them. Two kinds of field still come from the command: those that only describe this
invocation (`INVOCATION_FIELDS`: which split, which inference, where outputs go, how many
devices) and every field named on the command line, which wins over the record. Naming another
`dataset.name` (a cross-dataset evaluation) keeps the whole `dataset` group of the command: the
trained run's paths and example selection belong to its own dataset.
"""
import copy
import json
from pathlib import Path
from typing import Iterable

import ml_collections
from absl import logging

from retina_jax import io_utils

CONFIG_FILE = "config.json"
# Top-level fields that describe an invocation, not the trained model: kept from the command...
INVOCATION_FIELDS = ("conv", "compilation_cache_dir", "eval", "inference", "predict", "gradcam",
                     "parallel")
# ... except which checkpoint is the model, which a recipe may choose (configs/drive.py:all_images
# takes its latest: it has no held-out images to rank checkpoints by).
RECIPE_FIELDS = ("eval.checkpoint",)


def record_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Writes the whole config of this training launch to `workdir/config.json`, so that the
    workdir says how it was made and later evaluations can apply it (`trained_config`). A
    resumed launch with other settings (more steps, say) replaces the file and logs each field
    that changed. Called once the checkpoint accepted the config: a refused resume leaves the
    file alone."""
    path = Path(workdir) / CONFIG_FILE
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        changed = changed_fields(flatten_config(json.loads(path.read_text())), flatten_config(current))
        if changed:
            logging.info("This launch's config differs from the previous one in %s (old -> new): %s",
                         path, describe_changes(changed))
    io_utils.write_json(path, current)


def trained_config(config: ml_collections.ConfigDict, workdir: str | Path,
                   overridden: Iterable[str]) -> ml_collections.ConfigDict:
    """`config` with the fields of the run recorded in `workdir/config.json`, except the
    `INVOCATION_FIELDS` (but for the `RECIPE_FIELDS` among them), the dotted keys in
    `overridden` (those the command line set) and, when `overridden` names another dataset than
    the trained one, the `dataset` group.
    Returns `config` itself when the workdir holds no record (a workdir trained before records
    existed), with a warning. Raises ValueError naming the file and key when a recorded value
    does not fit its field."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        logging.warning("%s does not exist: using the config as given, which must match the one the "
                        "checkpoint was trained with.", path)
        return config
    try:
        recorded = flatten_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{path} is not a config recorded by training (a JSON object of config "
                         f"fields): {error}") from error
    overridden = set(overridden)
    keep = set(INVOCATION_FIELDS)
    if "dataset.name" in overridden and config.dataset.name != recorded.get("dataset.name"):
        keep.add("dataset")
    current = flatten_config(config)
    merged = copy.deepcopy(config)
    for key, value in recorded.items():
        if key in overridden or key not in current or (key.split(".")[0] in keep
                                                       and key not in RECIPE_FIELDS):
            continue
        *groups, leaf = key.split(".")
        parent = merged
        for group in groups:
            parent = parent[group]
        try:
            parent[leaf] = value
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: field {key!r} holds {value!r}, which does not fit this version's "
                             f"config ({error}); pass --config.{key}=VALUE to set it.") from error
    changed = changed_fields(current, flatten_config(merged))
    if changed:
        logging.info("Applying the model as trained: %s sets these fields differently from --config "
                     "(--config -> trained): %s", path, describe_changes(changed))
    return merged


def flatten_config(config: ml_collections.ConfigDict | dict) -> dict:
    """{"train.num_steps": 6000, ...}: the leaves of a nested config (or its JSON) by dotted key."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            flat.update({f"{key}.{sub}": sub_value for sub, sub_value in flatten_config(value).items()})
        else:
            flat[key] = value
    return flat


def changed_fields(before: dict, after: dict) -> dict:
    """{dotted key: (before, after)} for every key whose value differs between two flat configs
    of the same kind (two JSON records, or two ConfigDicts)."""
    return {key: (before.get(key), after.get(key)) for key in before.keys() | after.keys()
            if before.get(key) != after.get(key)}


def describe_changes(changed: dict) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))
