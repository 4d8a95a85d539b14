"""Orbax checkpoints: keep the latest step (for resume) and the best by a validation metric.

Each checkpoint holds the train state and a small JSON record of what produced it (the model
config), so that a workdir holding another model's checkpoint refuses to resume instead of
failing deep inside a restore or, worse, loading mismatched weights.
"""
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model."""


def create_manager(directory: str | Path, *, best_metric: str = "dice",
                   best_mode: str = "max") -> ocp.CheckpointManager:
    best_sign = 1.0 if best_mode == "max" else -1.0
    options = ocp.CheckpointManagerOptions(
        # Preservation policies keep latest AND best; `best_fn` + `max_to_keep` would delete the
        # newest step when it is not among the best, which breaks resume.
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=1),
            policies.BestN(get_metric_fn=lambda metrics: best_sign * metrics[best_metric],
                           reverse=False, n=1),
        ]),
        best_fn=lambda metrics: metrics[best_metric],  # only so that best_step() answers
        best_mode=best_mode,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(Path(directory).resolve(), options=options,
                                 item_names=("state", "run"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, run_info: dict,
         metrics: dict[str, float]) -> None:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               run=ocp.args.JsonSave(run_info)),
                 metrics=metrics, force=True)


def architecture(model_record: dict | None) -> dict | None:
    """A model record without its compute dtype: what must match for parameters to fit."""
    return None if model_record is None else {key: value for key, value in model_record.items()
                                              if key != "dtype"}


def restore(manager: ocp.CheckpointManager, step: int, target_state: Any,
            run_info: dict) -> tuple[Any, dict]:
    """Restores `step` into arrays shaped and sharded like `target_state`.

    Returns the state and the saved run info. Raises CheckpointMismatchError when the saved
    model config differs from `run_info["model"]` in anything but the compute dtype (parameters
    are float32 in every precision, so a run may resume or be evaluated in another).
    """
    saved_info = manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]
    if architecture(saved_info.get("model")) != architecture(run_info["model"]):
        raise CheckpointMismatchError(
            f"{manager.directory} holds a checkpoint (step {step}) of model {saved_info.get('model')}, "
            f"but this run's model is {run_info['model']}. Use another --workdir, or the config "
            "that wrote the checkpoint.")
    abstract_state = jax.tree.map(
        lambda array: jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=array.sharding),
        target_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], saved_info
